"""When the sidecars' config is regenerated after a cluster change (a push, in istiod's
words).

Every Service endpoint change rewrites the config of every meshed pod on the node. A
Deployment coming up in waves (runtime.MAX_STARTING) changes the endpoints once per pod,
so pushing on every change costs O(pods²) config generations: 194 for 30 pods, where the
same pods started all at once needed 65 (2026-12-04, scripts/bench_lab_pods.py). istiod
merges a burst of changes into one push the same way (its debounce, PILOT_DEBOUNCE_AFTER
100 ms / PILOT_DEBOUNCE_MAX 10 s); here the bound is shorter, one second, as the lab's
passes are 0.2 s apart and a user waits on the result.

The rule: a change pushes at once when the last push is at least EVERY old (a lone
change, e.g. a rollout's new pod, is not delayed); within a burst, it waits until the
cluster has not changed for QUIET, or until the last push is EVERY old. A Deployment's
pods turn Ready a few tenths of a second apart, so a pass without a change does not end
a burst.
"""

from __future__ import annotations

EVERY = 1.0  # seconds: at most one push per second while the cluster keeps changing
QUIET = 0.5  # seconds without a change that end a burst


class PushThrottle:
    def __init__(self, every: float = EVERY, quiet: float = QUIET) -> None:
        self.every, self.quiet = every, quiet
        self.pushed = ""  # the cluster signature the sidecars' config was last made from
        self.pushed_at: float | None = None
        self._seen = ""  # the signature of the previous pass
        self._changed_at = 0.0  # when a pass last saw a new signature

    def due(self, signature: str, now: float) -> bool:
        """Whether this pass, which sees ``signature``, should push; call done() when
        the push succeeded. False while nothing changed since the last push."""
        if signature != self._seen:
            self._seen, self._changed_at = signature, now
        if signature == self.pushed:
            return False
        return (self.pushed_at is None or now - self.pushed_at >= self.every
                or now - self._changed_at >= self.quiet)

    def pending(self, signature: str) -> bool:
        return signature != self.pushed

    def done(self, signature: str, now: float) -> None:
        self.pushed, self.pushed_at = signature, now
