"""The web chat (``vlmkit chat ... --web``): a gradio page over the same :class:`ChatSession` as the terminal.

Image upload (checked like ``/image``: a clear message in the page for a file that is not an image or too large),
the conversation, sliders for temperature / top-p / beams / max-new-tokens that the next reply is generated with, and
replies streamed piece by piece. Each browser tab has its own session; the one model answers one reply at a time.
Binds 127.0.0.1 unless ``--host`` says otherwise (docs/chat.md § Security). Nothing is fetched from the network.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmkit.chat.engine import ChatEngine, ChatSession
from vlmkit.chat.formats import OPTION_SEPARATOR
from vlmkit.chat.settings import LIMITS, GenerationSettings
from vlmkit.errors import VlmkitError

#: Upper ends of the sliders (the settings' own limits are wider; /set in the terminal reaches them).
SLIDER_MAX = {"temperature": 2.0, "max_new_tokens": 256}
SLIDER_STEP = {"temperature": 0.05, "top_p": 0.05, "num_beams": 1, "max_new_tokens": 1}


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports leave the machine
    from vlmkit.extras import require

    return require("gradio", "chat", "vlmkit chat --web")


def gr_skip() -> Any:
    """Leave a component as it is (a rejected upload keeps the image in effect on show)."""
    return _gradio().skip()


def _error(e: Exception) -> str:
    return f"**error:** {e}"


class WebChat:
    """The event handlers of the page; each takes and returns the tab's :class:`ChatSession` (gradio state)."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine

    def session(self, session: ChatSession | None) -> ChatSession:
        return session if session is not None else ChatSession(self.engine)

    def upload(self, path: str | None, session: ChatSession | None) -> tuple[Any, ...]:
        """Check and attach an uploaded file; the upload box is emptied for the next one (the preview shows it)."""
        session = self.session(session)
        if not path:
            return None, gr_skip(), "", session
        name = Path(path).name
        try:
            width, height = session.attach_image(path, name=name)
        except VlmkitError as e:
            return None, gr_skip(), _error(e), session
        return None, path, f"image attached: {name} ({width}x{height}); it is in effect for the next questions", session

    def settings(self, session: ChatSession, values: dict[str, Any]) -> GenerationSettings:
        settings = session.settings
        for name, value in values.items():
            settings = settings.with_value(name, value)
        return settings

    def ask(self, text: str, history: list[dict[str, Any]] | None, session: ChatSession | None, temperature: float,
            top_p: float, num_beams: float, max_new_tokens: float) -> Iterator[tuple[Any, ...]]:
        """Streams (conversation, status, session, question box) while the reply grows."""
        session, history = self.session(session), list(history or [])
        try:
            session.settings = self.settings(session, {"temperature": temperature, "top_p": top_p,
                                                       "num_beams": num_beams, "max_new_tokens": max_new_tokens})
            reply = session.ask(text or "")
        except VlmkitError as e:
            yield history, _error(e), session, text
            return
        notes = [f"history cut: the {reply.dropped} oldest turn(s) left out to fit "
                 f"{self.engine.format.max_tokens} tokens"] if reply.dropped else []
        notes.append(f"reply {len(session.turns) + 1} generated with {session.settings.describe()}")
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        shown = ""
        for piece in reply.stream():
            shown += piece
            history[-1] = {"role": "assistant", "content": shown}
            yield history, "generating ...", session, ""
        history[-1] = {"role": "assistant", "content": reply.text}
        yield history, "; ".join(notes), session, ""

    def reset(self, session: ChatSession | None) -> tuple[Any, ...]:
        session = self.session(session)
        session.reset()
        return [], None, None, "conversation and images forgotten", session


def _slider(gr: Any, name: str, settings: GenerationSettings) -> Any:
    limit = LIMITS[name]
    low = SLIDER_STEP[name] if not limit.low_inclusive else limit.low
    return gr.Slider(low, SLIDER_MAX.get(name, limit.high), value=getattr(settings, name), step=SLIDER_STEP[name],
                     label=name.replace("_", " "), info=limit.meaning, elem_id=f"chat-{name.replace('_', '-')}")


def build_app(engine: ChatEngine) -> Any:
    """The gradio Blocks of the chat page (not launched)."""
    gr = _gradio()
    chat = WebChat(engine)
    with gr.Blocks(title="vlmkit chat", analytics_enabled=False) as app:
        session = gr.State(None)
        gr.Markdown(f"### vlmkit chat\n{engine.source}\n\n{engine.format.describe()}")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image (PNG, JPEG, ...)", type="filepath", elem_id="chat-upload")
                preview = gr.Image(label="image in effect", interactive=False, elem_id="chat-preview")
                sliders = [_slider(gr, name, engine.settings) for name in LIMITS]
            with gr.Column(scale=2):
                history = gr.Chatbot(label="conversation", elem_id="chat-history", height=420)
                question = gr.Textbox(label="question", elem_id="chat-question",
                                      placeholder=f"a question (LaVIN: question {OPTION_SEPARATOR} option A "
                                                  f"{OPTION_SEPARATOR} option B)")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="chat-send")
                    reset = gr.Button("Reset", elem_id="chat-reset")
                status = gr.Markdown("", elem_id="chat-status")
        upload.upload(chat.upload, [upload, session], [upload, preview, status, session])
        ask_inputs = [question, history, session, *sliders]
        ask_outputs = [history, status, session, question]
        send.click(chat.ask, ask_inputs, ask_outputs)
        question.submit(chat.ask, ask_inputs, ask_outputs)
        reset.click(chat.reset, [session], [history, preview, upload, status, session])
    return app


def serve(engine: ChatEngine, host: str, port: int) -> int:
    """Serve until interrupted; prints the address once the server listens."""
    app = build_app(engine)
    app.queue(default_concurrency_limit=1)  # one model: replies are generated one after another
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, max_file_size=engine.limits.max_bytes,
               ssr_mode=False, mcp_server=False, quiet=True, prevent_thread_lock=True, footer_links=[])
    print(f"web chat on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
