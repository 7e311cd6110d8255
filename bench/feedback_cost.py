"""What blend's feedback costs a worker batch: the CPU time of its own work (keeping each
ranked user's part lists, crediting the events of users ranked before) as a share of the
batch's learn_many + recommend_many, on a synthetic stream (10k items, Pareto popularity).

``python -m bench.feedback_cost [--users 100000]``
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    import torch

    import online_models.blend as blend
    from core.schema import Event

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    rng = random.Random(7)
    events = [Event(user_id=f"u{rng.randrange(args.users)}", item_id=f"i{int(rng.paretovariate(0.7)) % 10_000}",
                    type="view", ts=float(t)) for t in range(args.events)]
    spent = [0.0]

    def timed(method):
        def run(*a, **kw):
            started = time.process_time()
            try:
                return method(*a, **kw)
            finally:
                spent[0] += time.process_time() - started
        return run

    for name in ("_remember_shown", "_take_feedback"):
        setattr(blend.Blend, name, timed(getattr(blend.Blend, name)))
    model, total = blend.Blend(), 0.0
    for start in range(0, len(events), args.batch):
        chunk = events[start : start + args.batch]
        started = time.process_time()
        model.learn_many(chunk)
        model.recommend_many(sorted({e.user_id for e in chunk}), 50)
        total += time.process_time() - started
    print(f"{args.users:,} users: batches {total:.2f} CPU-s, feedback's own work {spent[0]:.3f} CPU-s "
          f"({spent[0] / total:.1%}); {len(events) / total:,.0f} events per CPU-second")


if __name__ == "__main__":
    main()
