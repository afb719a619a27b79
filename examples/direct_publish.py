"""Publish a job straight to NATS, receive its terminal record on a reply subject, then read it from KV.

    pip install nats-py msgpack
    python3 examples/direct_publish.py nats://127.0.0.1:4222
"""
import asyncio
import sys
import uuid

import msgpack
import nats


async def main(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()

    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    job = {
        "id": str(uuid.uuid4()),           # optional; makes retries of this publish safe
        "message": "hello from python; $(not a shell)",
        "reply_to": inbox,
    }
    # The subject names the agent. JSON works too: send json.dumps(job) with a Content-Type header.
    await js.publish("fleet.jobs.echo", msgpack.packb(job), headers={"Nats-Msg-Id": job["id"]})

    reply = await replies.next_msg(timeout=60)
    record = msgpack.unpackb(reply.data)
    print("reply:", record["status"], repr(record["stdout"]))

    kv = await js.key_value("fleet_jobs")
    entry = await kv.get(job["id"])
    print("kv:", msgpack.unpackb(entry.value)["status"])
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"))
