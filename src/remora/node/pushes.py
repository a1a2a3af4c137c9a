"""When the sidecars' config is regenerated after a cluster change (a push, in istiod's
words).

Every Service endpoint change rewrites the config of every meshed pod on the node. A
Deployment coming up in waves (runtime.MAX_STARTING) changes the endpoints once per pod,
so pushing on every change costs O(pods²) config generations: 194 for 30 pods, where the
same pods started all at once needed 65 (2026-12-04, scripts/bench_lab_pods.py). istiod
merges a burst of changes into one push the same way (its debounce, PILOT_DEBOUNCE_AFTER
100 ms / PILOT_DEBOUNCE_MAX 10 s); here the bound is shorter, one second, as the lab's
passes are 0.2 s apart and a user waits on the result.

The rule: a change pushes at once when the last push is old enough (a lone change, e.g.
a rollout's new pod, is not delayed); within a burst, it waits until the cluster has not
changed for QUIET, or until the last push is old enough: EVERY, or COST_RATIO times what
that push took, whichever is longer, so that pushes take at most a fifth of the
reconciler's time however many pods there are (on a loaded 2-core host one push of 30
pods took 0.7 s, every pass then found the last push a second old, and a fixed bound
merged nothing). A Deployment's pods turn Ready a few tenths of a second apart, so a pass
without a change does not end a burst.
"""

from __future__ import annotations

EVERY = 1.0  # seconds: at most one push per second while the cluster keeps changing
QUIET = 0.5  # seconds without a change that end a burst
COST_RATIO = 4.0  # a push waits at least this many times what the last one took


class PushThrottle:
    def __init__(self, every: float = EVERY, quiet: float = QUIET,
                 cost_ratio: float = COST_RATIO) -> None:
        self.every, self.quiet, self.cost_ratio = every, quiet, cost_ratio
        self.pushed = ""  # the cluster signature the sidecars' config was last made from
        self.pushed_at: float | None = None
        self._gap = every  # how old the last push must be before a push within a burst
        self._seen = ""  # the signature of the previous pass
        self._changed_at = 0.0  # when a pass last saw a new signature

    def due(self, signature: str, now: float) -> bool:
        """Whether this pass, which sees ``signature``, should push; call done() when
        the push succeeded. False while nothing changed since the last push."""
        if signature != self._seen:
            self._seen, self._changed_at = signature, now
        if signature == self.pushed:
            return False
        return (self.pushed_at is None or now - self.pushed_at >= self._gap
                or now - self._changed_at >= self.quiet)

    def pending(self, signature: str) -> bool:
        return signature != self.pushed

    def done(self, signature: str, now: float, took: float = 0.0) -> None:
        """The push of ``signature`` that started at ``now`` succeeded in ``took`` s."""
        self.pushed, self.pushed_at = signature, now
        self._gap = max(self.every, self.cost_ratio * took)
