"""Parse an istio-iptables argv list into a CaptureConfig, with pflag's rules.

The node runtime runs the istio-init container's args exactly as the injector writes them
(`istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*'
-d 15090,15021,15020 --log_output_level=default:info`), so this accepts what Go's pflag
accepts: `--name value`, `--name=value`, `-x value`, `-xvalue`, bool flags bare or as
`--flag=true`, and `--` to end the flags. Istio's log flags are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from remora.capture.config import FLAGS, IGNORED_VALUE_FLAGS, CaptureConfig, Flag, build_config
from remora.errors import UsageError

_LONG = {f.long: f for f in FLAGS}
_SHORT = {f.short: f for f in FLAGS if f.short}
_FIX = "see `remora capture --help` for istio-iptables' flags"


def _bool(flag: Flag, text: str) -> bool:
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise UsageError(f"--{flag.long}={text!r} is not a boolean", "use true or false")


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> CaptureConfig:
    """ARGV without the program name (e.g. the container's `args`)."""
    given: dict[str, str | bool | None] = {}
    args = list(argv)
    if args and args[0] in ("istio-iptables", "istio-iptables.sh"):
        args = args[1:]  # a container `command` that includes the program name
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if i < len(args):
                raise UsageError(f"unexpected argument {args[i]!r}", _FIX)
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in IGNORED_VALUE_FLAGS:
                if not eq:
                    i += 1
                continue
            flag = _LONG.get(name)
            if flag is None:
                raise UsageError(f"unknown flag --{name}", _FIX)
            if flag.kind == "bool":
                given[flag.field] = _bool(flag, value) if eq else True
                continue
            if not eq:
                if i >= len(args):
                    raise UsageError(f"flag --{name} needs a value", _FIX)
                value = args[i]
                i += 1
            given[flag.field] = value
        elif arg.startswith("-") and len(arg) > 1:
            # A group of short flags: bools may be combined (-n), the last may take a value.
            j = 1
            while j < len(arg):
                flag = _SHORT.get(arg[j])
                if flag is None:
                    raise UsageError(f"unknown flag -{arg[j]}", _FIX)
                j += 1
                if flag.kind == "bool":
                    if j < len(arg) and arg[j] == "=":
                        given[flag.field] = _bool(flag, arg[j + 1:])
                        break
                    given[flag.field] = True
                    continue
                if j < len(arg):
                    given[flag.field] = arg[j + 1:] if arg[j] == "=" else arg[j:]
                elif i < len(args):
                    given[flag.field] = args[i]
                    i += 1
                else:
                    raise UsageError(f"flag -{flag.short} needs a value", _FIX)
                break
        else:
            raise UsageError(f"unexpected argument {arg!r} (istio-iptables takes only flags)",
                             _FIX)
    return build_config(given, env)
