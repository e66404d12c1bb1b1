#!/usr/bin/env python3
"""Derives deploy/seccomp/reuselb.json from a container runtime's default seccomp profile.

    python3 deploy/seccomp/derive.py /usr/share/containers/seccomp.json > deploy/seccomp/reuselb.json

The input is the containers/common default profile (what podman and CRI-O apply as the runtime
default; Debian bookworm's golang-github-containers-common 0.50.1). Its rules may depend on the
container's capabilities and architecture, which only podman and CRI-O understand; containerd
reads a Localhost profile as a plain OCI `LinuxSeccomp` and would apply every conditional rule.
So the output is resolved for a container holding exactly CAP_BPF and CAP_PERFMON (the daemon's
two capabilities), in the plain OCI form that podman, CRI-O and containerd all read:

- a rule that needs a capability the daemon lacks is dropped; a rule that applies only without a
  capability the daemon has is dropped;
- the architectures are x86_64 and arm64 (and their 32-bit modes); rules for one of them are kept
  for all (the runtimes skip syscall names an architecture
  does not have; none of these rules has arguments);
- the one change: `bpf` is allowed. The default profile allows it only with CAP_SYS_ADMIN, so a
  container with CAP_BPF alone gets EPERM from seccomp before the kernel looks at CAP_BPF.

Nothing else is added: `perf_event_open` stays denied (reuselb loads and attaches its programs
without it; the container test proves `reuselb doctor` passes with this profile).
"""
import json
import sys

CAPS = {"CAP_BPF", "CAP_PERFMON"}
# The nodes' architectures (with their 32-bit compat modes). One filter can hold several only if
# they share the byte order: runc refuses a big-endian MIPS or s390x entry on x86_64 ("error
# adding architecture to seccomp filter: numerical argument out of domain").
NODE_ARCHITECTURES = {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}
ALLOWED = ["bpf"]


def applies(rule):
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if not set(includes.get("caps") or []) <= CAPS:
        return False
    if set(excludes.get("caps") or []) & CAPS:
        return False
    if includes.get("minKernel") or excludes.get("arches") or excludes.get("minKernel"):
        raise SystemExit(f"unexpected condition in {rule['names']}: extend derive.py")
    return True


def main(path):
    default = json.load(open(path))
    architectures = []
    for arch in default["archMap"]:
        if arch["architecture"] not in NODE_ARCHITECTURES:
            continue
        for name in [arch["architecture"], *arch.get("subArchitectures", [])]:
            if name not in architectures:
                architectures.append(name)
    syscalls = []
    for rule in default["syscalls"]:
        if not applies(rule):
            continue
        names = [n for n in rule["names"] if n not in ALLOWED]
        if not names:
            continue
        out = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            out["args"] = rule["args"]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        syscalls.append(out)
    syscalls.append({"names": ALLOWED, "action": "SCMP_ACT_ALLOW"})
    profile = {
        "defaultAction": default["defaultAction"],
        "defaultErrnoRet": default["defaultErrnoRet"],
        "architectures": architectures,
        "syscalls": syscalls,
    }
    json.dump(profile, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json")
