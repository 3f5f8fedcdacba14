"""Processors: prompt formats (vlmkit.processors.prompts) and image transforms."""
