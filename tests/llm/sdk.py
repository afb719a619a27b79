"""The official OpenAI SDK against the fleet's front door: a whole answer, a streamed one, an unknown model, a
stream the client closes early, and the model list. Prints what it saw as one JSON object.

usage: sdk.py BASE_URL MODEL LONG_MODEL
"""
import json
import sys

from openai import APIStatusError, OpenAI


def main():
    base, model, long_model = sys.argv[1:4]
    client = OpenAI(base_url=base, api_key="not-needed-on-loopback", max_retries=0, timeout=120)
    messages = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "Say hello."}]
    out = {}

    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0, seed=7)
    out["whole"] = {"id": whole.id, "object": whole.object, "model": whole.model,
                    "role": whole.choices[0].message.role, "content": whole.choices[0].message.content,
                    "finish_reason": whole.choices[0].finish_reason,
                    "usage": whole.usage.model_dump() if whole.usage else None}

    pieces, usage, finish, ids = [], None, None, set()
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=12, stream=True,
                                                stream_options={"include_usage": True}):
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    out["stream"] = {"pieces": pieces, "usage": usage, "finish_reason": finish, "ids": sorted(ids)}

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        out["unknown"] = None
    except APIStatusError as e:
        out["unknown"] = {"status": e.status_code, "message": e.message, "code": e.code}

    stream = client.chat.completions.create(model=long_model, stream=True,
                                            messages=[{"role": "user", "content": "Write a long story about ships."}])
    first = next(iter(stream))
    stream.close()
    out["closed"] = {"id": first.id}

    out["models"] = sorted(m.id for m in client.models.list().data)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
