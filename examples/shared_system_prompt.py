#!/usr/bin/env python3
"""Several chat sessions that share one long system prompt, through the prefixd Python client.

Each turn prints the reply as it streams, then how many prompt tokens came from the cache and
how long the first token took. The first turn of the first session computes the system prompt;
every other session finds it cached, and every second turn also finds its own first turn.

    scripts/run &                                  # the daemon, on 127.0.0.1:7878
    .venv/bin/python examples/shared_system_prompt.py [--sessions 3] [--fresh]

Environment: PREFIXD_ADDR (default 127.0.0.1:7878; ``unix:/path`` for a Unix socket) and
PREFIXD_API_KEY (a tenant's key, for a daemon started with an admin key). ``--fresh`` evicts
this tenant's cached prefixes first, so the first turn shows the uncached cost.

The client comes from ``pip install clients/python``; without that, it is imported from the
source tree, and its gRPC stubs are generated from proto/prefixd/v1/prefixd.proto on first use.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

try:
    import prefixd
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients",
                                    "python"))
    import prefixd

SYSTEM = """You are the assistant of Spoke & Chain, a small bicycle shop in Utrecht.
About the shop: it sells city bikes, road bikes, e-bikes and cargo bikes, new and second hand,
and repairs every brand. Opening hours: Monday to Friday 9:00 to 18:00, Saturday 10:00 to 17:00,
closed on Sunday. Repairs: a flat tyre is fixed while you wait for 15 euros; a full service
costs 79 euros and takes one working day; e-bike motor diagnostics cost 35 euros. Rentals: a city
bike costs 12 euros a day, a cargo bike 35 euros a day, with a 100 euro deposit. Payment: card or
cash; no cheques. Delivery: bikes bought in the shop are delivered free within 10 km.
Warranty: two years on new bikes, six months on second-hand bikes and on repairs.
Answer the customer in one or two friendly sentences. If you do not know, say so and suggest
calling the shop on 030 123 4567."""

SESSIONS: List[List[str]] = [
    ["When are you open on Saturday?", "And on Sunday?"],
    ["How much does it cost to rent a cargo bike?", "Is there a deposit?"],
    ["Can you fix a flat tyre today?", "How long does that take?"],
    ["Do you repair e-bikes?", "What does the diagnostics cost?"],
    ["Do you deliver bikes?", "How far?"],
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3, help="chat sessions to run (1-5)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per reply")
    ap.add_argument("--fresh", action="store_true", help="evict this tenant's cache first")
    args = ap.parse_args()

    with prefixd.Client() as client:  # PREFIXD_ADDR and PREFIXD_API_KEY, or the defaults
        try:
            client.health(timeout=5)
        except prefixd.Unavailable:
            print(f"no prefixd at {client.target}: start it with scripts/run, or set "
                  "PREFIXD_ADDR", file=sys.stderr)
            return 1
        if args.fresh:
            gone = client.evict(all=True)
            print(f"(evicted {gone.total} cached blocks)\n")
        n_system = len(client.tokenize(messages=[{"role": "system", "content": SYSTEM}]))
        print(f"system prompt: {n_system} tokens, shared by {args.sessions} sessions\n")

        for s, questions in enumerate(SESSIONS[:max(1, min(args.sessions, len(SESSIONS)))]):
            messages: List[Dict[str, str]] = [{"role": "system", "content": SYSTEM}]
            for turn, question in enumerate(questions, 1):
                messages.append({"role": "user", "content": question})
                print(f"[session {s + 1}, turn {turn}] > {question}\n  ", end="", flush=True)
                stream = client.generate(messages=messages, max_tokens=args.max_tokens)
                for chunk in stream:
                    print(chunk.text.replace("\n", "\n  "), end="", flush=True)
                u, t = stream.usage, stream.timings
                assert u is not None and t is not None
                print(f"\n  -- prompt {u.prompt_tokens} tokens, {u.cached_tokens} from the cache "
                      f"({u.computed_tokens} computed); first token after {t.ttft_ms:.0f} ms\n")
                messages.append({"role": "assistant", "content": stream.text})

        st = client.stats()
        print(f"daemon: {st.hit_tokens} of {st.query_tokens} prompt tokens served from the "
              f"cache since it started ({st.hit_rate:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
