"""Drives eddy's OpenAI-compatible API with the official `openai` Python client.

Usage: openai_client.py BASE_URL API_KEY WORKFLOW EVENT_DRIVEN_WORKFLOW

Makes a plain completion and a streamed one on WORKFLOW, and a completion on
EVENT_DRIVEN_WORKFLOW (which eddy must refuse), and prints what the client saw as one JSON
object on stdout. The Rust test `openai_client` runs it and checks the result.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, api_key, workflow, evented = sys.argv[1:5]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    seen = {"version": openai.__version__}

    completion = client.chat.completions.create(
        model=workflow,
        messages=[{"role": "user", "content": "Say hello"}],
    )
    choice = completion.choices[0]
    seen["plain"] = {
        "id": completion.id,
        "object": completion.object,
        "model": completion.model,
        "role": choice.message.role,
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
        "total_tokens": completion.usage.total_tokens,
    }

    pieces, finish_reason, total_tokens, ids = [], None, None, set()
    stream = client.chat.completions.create(
        model=workflow,
        messages=[{"role": "user", "content": "Say hello, slowly"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            if chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices[0].finish_reason:
                finish_reason = chunk.choices[0].finish_reason
        if chunk.usage:
            total_tokens = chunk.usage.total_tokens
    seen["stream"] = {
        "pieces": pieces,
        "finish_reason": finish_reason,
        "total_tokens": total_tokens,
        "ids": len(ids),
    }

    try:
        client.chat.completions.create(
            model=evented, messages=[{"role": "user", "content": "x"}]
        )
        seen["evented"] = {"raised": None}
    except openai.APIStatusError as e:
        seen["evented"] = {
            "raised": type(e).__name__,
            "status": e.status_code,
            "code": e.code,
            "type": e.type,
            "message": e.message,
        }

    print(json.dumps(seen))


if __name__ == "__main__":
    main()
