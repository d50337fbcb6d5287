"""Chat messages in the OpenAI shape, shared by the OpenAI-compatible and vLLM backends: both hand the
same messages to the same kind of chat-template renderer, and differ only in how an image travels (a
base64 data URL over HTTP, a PIL image in-process), so that is the one thing a caller supplies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resources.chat import ChatRequest, ImagePart

Message = dict[str, Any]
ImageContent = Callable[[ImagePart], dict[str, Any]]


def chat_messages(
    request: ChatRequest, assistant_prefix: str | None, image_content: ImageContent
) -> list[Message]:
    """System message when present, then the user turn, then the assistant prefix when non-empty.

    Without images the user content is one string (the text parts joined with nothing between them, as
    the transformers backend does), because servers render list content for string-only chat templates
    by joining parts with newlines. With images it is a list of parts in the request's order. An empty
    prefix adds no assistant message: the caller asks for a plain generation prompt instead, as the
    transformers backend does."""
    messages: list[Message] = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    if request.images:
        content: Any = [
            image_content(part) if isinstance(part, ImagePart) else {"type": "text", "text": part}
            for part in request.user
        ]
    else:
        content = "".join(part for part in request.user if isinstance(part, str))
    messages.append({"role": "user", "content": content})
    if assistant_prefix:
        messages.append({"role": "assistant", "content": assistant_prefix})
    return messages
