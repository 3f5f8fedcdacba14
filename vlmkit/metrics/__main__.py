"""``python -m vlmkit.metrics {scienceqa,vqa,caption} ...``: score a results file with the official rules.

On success stdout holds exactly one JSON object. A bad input prints one line ``error: <what, where, how to fix>``
on stderr and exits with status 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from vlmkit.errors import VlmkitError

USER_ERROR_STATUS = 2  # the status argparse uses for bad arguments; every vlmkit command uses it for user errors


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the message; keep the one-line error contract for bad arguments too."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)


def score_scienceqa(args: argparse.Namespace) -> dict[str, Any]:
    from vlmkit.metrics.scienceqa import load_pid_splits, load_scienceqa_problems, load_scienceqa_results, \
        scienceqa_scores

    problems = load_scienceqa_problems(args.problems)
    results = load_scienceqa_results(args.results)
    pid_splits = load_pid_splits(args.problems) if args.split else None
    return scienceqa_scores(problems, results, split=args.split, pid_splits=pid_splits,
                            problems_source=args.problems, results_source=args.results, partial=args.partial)


def score_vqa(args: argparse.Namespace) -> dict[str, Any]:
    from vlmkit.metrics.vqa import load_vqa_annotations, load_vqa_questions, load_vqa_results, vqa_scores

    questions = load_vqa_questions(args.questions)
    annotations = load_vqa_annotations(args.annotations)
    results = load_vqa_results(args.results)
    return vqa_scores(annotations, results, questions, annotations_source=args.annotations,
                      results_source=args.results, questions_source=args.questions,
                      allow_answer_count=args.allow_answer_count)


def score_caption(args: argparse.Namespace) -> dict[str, Any]:
    from vlmkit.metrics.caption import caption_scores, load_caption_ground_truth, load_caption_results

    ground_truth = load_caption_ground_truth(args.annotations)
    results = load_caption_results(args.results)
    return caption_scores(ground_truth, results, spice=args.spice, ground_truth_source=args.annotations,
                          results_source=args.results)


def run_guarded(command: Callable[[argparse.Namespace], dict[str, Any]], args: argparse.Namespace) -> int:
    """Run a scoring command: its scores as one JSON object on stdout, or a user error as one line on stderr."""
    try:
        scores = command(args)
    except VlmkitError as e:
        if args.debug:
            raise
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return USER_ERROR_STATUS
    print(json.dumps(scores, indent=2))
    return 0


def build_parser(prog: str = "python -m vlmkit.metrics") -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=prog,
                            description="Score benchmark results with the official rules; prints one JSON object.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    sub = parser.add_subparsers(dest="benchmark", metavar="{scienceqa,vqa,caption}", required=True,
                                parser_class=_OneLineParser)

    sqa = sub.add_parser("scienceqa", parents=[common], help="ScienceQA accuracy (NAT ... G7-12, Average, topics)")
    sqa.add_argument("--problems", required=True, help="problems.json of ScienceQA")
    sqa.add_argument("--results", required=True, help='results file {"results": {problem_id: option_index}}')
    sqa.add_argument("--split", default=None,
                     help="score only this split, e.g. test (pid_splits.json next to problems.json, else each "
                          "problem's 'split' field)")
    sqa.add_argument("--partial", action="store_true",
                     help="with --split: score results that cover only part of the split (the output says so)")
    sqa.set_defaults(command=score_scienceqa)

    vqa = sub.add_parser("vqa", parents=[common], help="VQA accuracy (overall, per answer / question type)")
    vqa.add_argument("--questions", required=True, help="v2_OpenEnded_mscoco_<split>2014_questions.json")
    vqa.add_argument("--annotations", required=True, help="v2_mscoco_<split>2014_annotations.json")
    vqa.add_argument("--results", required=True, help="results file [{question_id, answer}]")
    vqa.add_argument("--allow-answer-count", action="store_true",
                     help="score questions whose annotation does not hold 10 answers (the score then means less)")
    vqa.set_defaults(command=score_vqa)

    cap = sub.add_parser("caption", parents=[common], help="BLEU-1..4, METEOR, ROUGE-L, CIDEr (raw, not ×100)")
    cap.add_argument("--annotations", required=True, help="COCO-format ground truth {images, annotations}")
    cap.add_argument("--results", required=True, help="results file [{image_id, caption}]")
    cap.add_argument("--spice", action="store_true", help="also compute SPICE (needs Stanford CoreNLP installed)")
    cap.set_defaults(command=score_caption)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    return run_guarded(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
