"""capture: the istio-iptables equivalent (the istio-init container's job).

API for the node runtime and other callers (each module is imported on use):

    from remora.capture.argv import parse_args        # istio-iptables argv -> CaptureConfig
    from remora.capture.apply import apply, verify, cleanup, dry_run

    config = parse_args(["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                         "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"])
    apply(config, Path("/run/netns/pod1"))     # idempotent; --reconcile semantics via config
    verify(config, Path("/run/netns/pod1")).ok
    cleanup(config, Path("/run/netns/pod1"))

Layout: config.py/validate.py (flags, env, checks), model.py (rules in run.go order),
render.py (restore text, golden transcript), runner.py (real and recording command runner),
state.py (reading iptables-save), routing.py (TPROXY policy routing via pyroute2),
facts.py (IPv6 and DNS servers of the namespace), apply.py (apply/verify/cleanup);
model_nft.py, render_nft.py, apply_nft.py: the same for --native-nftables.
"""
