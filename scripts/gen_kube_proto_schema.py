"""Write src/remora/kubeapi/proto_schema.py: the field numbers, JSON names and types of the
protobuf messages kubectl sends for the kinds the lab serves, from Kubernetes' own sources.

Inputs (git directories, read with `git show COMMIT:PATH`, no work tree needed):
  github.com/kubernetes/api          core/v1, apps/v1, autoscaling/v1: generated.proto, types.go
  github.com/kubernetes/apimachinery pkg/apis/meta/v1, pkg/runtime, pkg/util/intstr,
                                     pkg/api/resource: generated.proto (+ meta/v1 types.go)

generated.proto gives each message's fields (number, name, type); types.go gives, per Go
struct field, what encoding/json does with it, which the decoder copies so that a decoded
protobuf body is the JSON client-go would have sent: a pointer field is sent even when
zero (`replicas: 0`), a non-pointer scalar/slice/map with `omitempty` is left out when
zero, and an embedded struct with `json:",inline"` (Volume's VolumeSource, Probe's
ProbeHandler) has its fields merged into its parent's object.

Usage: python scripts/gen_kube_proto_schema.py API_GIT_DIR API_COMMIT MACHINERY_GIT_DIR
       MACHINERY_COMMIT > src/remora/kubeapi/proto_schema.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

SHORT = {"k8s.io.api.core.v1": "core", "k8s.io.api.apps.v1": "apps",
         "k8s.io.api.autoscaling.v1": "autoscaling",
         "k8s.io.apimachinery.pkg.apis.meta.v1": "meta",
         "k8s.io.apimachinery.pkg.runtime": "runtime",
         "k8s.io.apimachinery.pkg.runtime.schema": "schema",
         "k8s.io.apimachinery.pkg.util.intstr": "intstr",
         "k8s.io.apimachinery.pkg.api.resource": "resource"}
API_FILES = {"core": "core/v1", "apps": "apps/v1", "autoscaling": "autoscaling/v1"}
MACHINERY_FILES = {"meta": "pkg/apis/meta/v1", "runtime": "pkg/runtime",
                   "schema": "pkg/runtime/schema", "intstr": "pkg/util/intstr",
                   "resource": "pkg/api/resource"}
ROOTS = ["runtime.Unknown", "core.Namespace", "core.Pod", "core.Service", "apps.Deployment",
         "autoscaling.Scale", "meta.DeleteOptions"]
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "sint32",
           "sint64", "double", "float", "fixed32", "fixed64", "sfixed32", "sfixed64"}
FIELD = re.compile(r"^\s+(optional|repeated) ([.\w]+) (\w+) = (\d+);")
MAP = re.compile(r"^\s+map<(\w+), ?([.\w]+)> (\w+) = (\d+);")
GO_FIELD = re.compile(r'^\s+(?:(\w+)\s+)?(\*?[][\w.*]+)\s+`([^`]*protobuf:"[^"]*"[^`]*)`')


def show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def resolve(type_name: str, pkg: str) -> str:
    if type_name in SCALARS:
        return type_name
    name = type_name.lstrip(".")
    if "." not in name:
        return f"{pkg}.{name}"
    full_pkg, _, msg = name.rpartition(".")
    return f"{SHORT[full_pkg]}.{msg}"


def parse_proto(text: str, pkg: str, out: dict[str, dict[int, list[object]]]) -> None:
    current = None
    for line in text.splitlines():
        if line.startswith("message "):
            current = f"{pkg}.{line.split()[1]}"
            out[current] = {}
        elif line.startswith("}"):
            current = None
        elif current is not None:
            if m := FIELD.match(line):
                label, type_name, name, num = m.groups()
                out[current][int(num)] = [name, resolve(type_name, pkg),
                                          "rep" if label == "repeated" else ""]
            elif m := MAP.match(line):
                key, value, name, num = m.groups()
                out[current][int(num)] = [name, f"{resolve(key, pkg)},{resolve(value, pkg)}",
                                          "map"]


def parse_go(text: str, pkg: str, out: dict[tuple[str, int], tuple[str, bool, bool, bool]]
             ) -> None:
    """(message, number) -> (json name, pointer?, omitempty?, inline?)"""
    current = None
    for line in text.splitlines():
        if m := re.match(r"^type (\w+) struct \{", line):
            current = f"{pkg}.{m.group(1)}"
        elif line.startswith("}"):
            current = None
        elif current is not None and (m := GO_FIELD.match(line)):
            go_name, go_type, tag = m.groups()
            json_tag = re.search(r'json:"([^"]*)"', tag)
            proto_tag = re.search(r'protobuf:"\w+,(\d+),', tag)
            if not json_tag or not proto_tag:
                continue
            json_name, _, opts = json_tag.group(1).partition(",")
            inline = go_name is None and not json_name  # encoding/json promotes it
            out[(current, int(proto_tag.group(1)))] = (
                json_name, go_type.startswith("*"), "omitempty" in opts.split(","), inline)


def main() -> None:
    api_dir, api_commit, mach_dir, mach_commit = sys.argv[1:5]
    messages: dict[str, dict[int, list[object]]] = {}
    go: dict[tuple[str, int], tuple[str, bool, bool, bool]] = {}
    for short, path in API_FILES.items():
        parse_proto(show(api_dir, api_commit, f"{path}/generated.proto"), short, messages)
        parse_go(show(api_dir, api_commit, f"{path}/types.go"), short, go)
    for short, path in MACHINERY_FILES.items():
        parse_proto(show(mach_dir, mach_commit, f"{path}/generated.proto"), short, messages)
    parse_go(show(mach_dir, mach_commit, "pkg/apis/meta/v1/types.go"), "meta", go)
    parse_go(show(mach_dir, mach_commit, "pkg/runtime/types.go"), "runtime", go)

    reachable: list[str] = []
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        reachable.append(name)
        for _, type_name, kind in messages[name].values():
            for t in str(type_name).split(",") if kind == "map" else [str(type_name)]:
                if t not in SCALARS:
                    todo.append(t)

    print('"""Generated by scripts/gen_kube_proto_schema.py: do not edit.\n')
    print("From github.com/kubernetes/api")
    print(f"  {api_commit}")
    print("  (core/v1, apps/v1, autoscaling/v1 generated.proto and types.go) and")
    print("github.com/kubernetes/apimachinery")
    print(f"  {mach_commit}")
    print("  (meta/v1, runtime, runtime/schema, util/intstr, api/resource generated.proto;")
    print("  meta/v1 and runtime types.go). Only the messages reachable from")
    print(textwrap.fill(", ".join(ROOTS) + ".", 88))
    print()
    print("MESSAGES: message -> {field number: (JSON name, type, flags)}; type is a proto")
    print("scalar, another message, or for a map 'KEY,VALUE'. Flags: r repeated, m map,")
    print("z kept when zero (a Go pointer, or no omitempty), i inlined into the parent")
    print('(an embedded struct with json:",inline").\n"""')
    print()
    print("MESSAGES: dict[str, dict[int, tuple[str, str, str]]] = {")
    for name in sorted(reachable):
        print(f"    {name!r}: {{")
        for num, (field, type_name, kind) in sorted(messages[name].items()):
            flags = {"rep": "r", "map": "m", "": ""}[str(kind)]
            info = go.get((name, num))
            json_name = str(field)
            if info is not None:
                json_name_go, pointer, omitempty, inline = info
                if inline:
                    flags += "i"
                elif json_name_go and json_name_go != field:
                    json_name = json_name_go  # encoding/json's name wins
                if pointer or not omitempty:
                    flags += "z"
            line = f"        {num}: ({json_name!r}, {type_name!r}, {flags!r}),"
            if len(line) > 100:
                line = f"        {num}: ({json_name!r},\n            {type_name!r}, {flags!r}),"
            print(line)
        print("    },")
    print("}")


if __name__ == "__main__":
    main()
