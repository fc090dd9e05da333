"""Parts of ``make demo`` (``genrec demo``), run in order by :mod:`infra.commands.demo`.

Each part is a module with ``TITLE`` and ``run(ctx: DemoContext) -> None`` that
prints what it shows. Parts share state through ``ctx.state`` (e.g. the fitted
tokenizer, the catalog, a trained model path, the sequence supervisor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    """What every demo part gets: the running broker, a work directory, the synthetic world."""

    kafka: Any            # ingest.kafka_client.KafkaConfig
    workdir: Path         # scratch space for this demo run (archive, checkpoints, models)
    world: Any            # ingest.synthetic.SyntheticWorld
    quick: bool = False   # smaller sizes (used by the demo smoke test)
    state: dict = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        print(text, flush=True)


#: Module names under infra.demo_parts, in the order the demo runs them.
PARTS = [
    "ingest_archive",   # issue 2: topics, replay of the synthetic world, archive, dead letters
    "sequences",        # issue 3: live per-user sequences on Ray actors
    "semantic_ids",     # issue 4: tokenizer fit, new items receiving SIDs live
    "generator",        # issue 5: train a small generator, eval table, generated sessions
    "fast_decoding",    # issue 6: plain vs speculative decoding on the trained model
    "serving",          # issue 7: Ray Serve app, HTTP traffic, first A/B report
    "alignment",        # issue 16: reward model, one alignment round, the gate, base vs aligned A/B
]
