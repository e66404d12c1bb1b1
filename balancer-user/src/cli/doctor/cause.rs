//! Why a BPF operation failed: a refusal (EPERM/EACCES from seccomp, missing capabilities, a Linux
//! security module) or a kernel that lacks the feature, told apart from the error number and what
//! the process can read about itself.
//!
//! [`Facts`] is what /proc and /sys say (capabilities, seccomp mode and filter count, the LSMs,
//! `kernel.unprivileged_bpf_disabled`, the kernel release); [`diagnose`] is a pure function of
//! those facts, the failure's errno and the kernel version the operation needs, so it is tested
//! with fabricated inputs. Invariant: a diagnosis advises a kernel upgrade only when the running
//! kernel is older than the version the operation needs; a refusal never reads as a missing
//! feature.
use std::{fmt, fs, io};

/// Capability numbers from linux/capability.h.
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const EPERM: i32 = libc::EPERM;
const EACCES: i32 = libc::EACCES;
const ENOSYS: i32 = libc::ENOSYS;
/// The kernel's internal "operation not supported" (include/linux/errno.h), which bpf() leaks.
const ENOTSUPP: i32 = 524;

/// A kernel version, major and minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl Version {
    /// `6.18.44-fc-v857` -> 6.18; `None` if the release does not start with `MAJOR.MINOR`.
    pub fn from_release(release: &str) -> Option<Self> {
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self(major, minor))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// What the process can read about its privileges and the kernel. `None`: could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// From /proc/sys/kernel/osrelease.
    pub kernel: Option<Version>,
    /// `CapEff:` of /proc/self/status.
    pub cap_eff: Option<u64>,
    /// `Seccomp:` of /proc/self/status: 0 none, 1 strict, 2 filter.
    pub seccomp_mode: Option<u32>,
    /// `Seccomp_filters:` of /proc/self/status (Linux 5.9+).
    pub seccomp_filters: Option<u32>,
    /// /sys/kernel/security/lsm (needs securityfs mounted), e.g. `capability,yama,apparmor,bpf`.
    pub lsms: Option<Vec<String>>,
    /// The AppArmor profile confining this process, from /proc/self/attr/apparmor/current
    /// (e.g. `cri-containerd.apparmor.d (enforce)`, or `unconfined`).
    pub apparmor_profile: Option<String>,
    /// /sys/fs/selinux/enforce.
    pub selinux_enforcing: Option<bool>,
    /// /proc/sys/kernel/unprivileged_bpf_disabled.
    pub unprivileged_bpf_disabled: Option<u32>,
}

impl Facts {
    /// Reads the facts of this process and kernel.
    pub fn read() -> Self {
        let read = |path: &str| fs::read_to_string(path).ok();
        let lsms = read("/sys/kernel/security/lsm").map(|l| parse_lsms(&l));
        // Linux 5.8+ has AppArmor's own file; before, /proc/self/attr/current is the major
        // LSM's, AppArmor's only where the list names it.
        let apparmor_listed = lsms.as_ref().is_some_and(|l| l.iter().any(|m| m == "apparmor"));
        let apparmor = read("/proc/self/attr/apparmor/current")
            .or_else(|| apparmor_listed.then(|| read("/proc/self/attr/current")).flatten());
        let mut facts = Self {
            kernel: read("/proc/sys/kernel/osrelease").as_deref().and_then(Version::from_release),
            lsms,
            apparmor_profile: apparmor.map(|p| p.trim_end_matches(['\0', '\n']).to_owned()),
            selinux_enforcing: read("/sys/fs/selinux/enforce").map(|v| v.trim() == "1"),
            unprivileged_bpf_disabled: read("/proc/sys/kernel/unprivileged_bpf_disabled")
                .and_then(|v| v.trim().parse().ok()),
            ..Self::default()
        };
        if let Some(status) = read("/proc/self/status") {
            facts.add_status(&status);
        }
        facts
    }

    /// Takes `CapEff:`, `Seccomp:` and `Seccomp_filters:` from the text of /proc/self/status.
    pub fn add_status(&mut self, status: &str) {
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match key {
                "CapEff" => self.cap_eff = u64::from_str_radix(value, 16).ok(),
                "Seccomp" => self.seccomp_mode = value.parse().ok(),
                "Seccomp_filters" => self.seccomp_filters = value.parse().ok(),
                _ => {}
            }
        }
    }

    fn has(&self, cap: u32) -> Option<bool> {
        self.cap_eff.map(|caps| caps & (1 << cap) != 0)
    }

    /// The capabilities reuselb needs that the process lacks (CAP_SYS_ADMIN stands in for both);
    /// `None` if CapEff could not be read.
    pub fn missing_capabilities(&self) -> Option<Vec<&'static str>> {
        let admin = self.has(CAP_SYS_ADMIN)?;
        let bpf = admin || self.has(CAP_BPF)?;
        let perfmon = admin || self.has(CAP_PERFMON)?;
        Some(
            [(!bpf).then_some("CAP_BPF"), (!perfmon).then_some("CAP_PERFMON")]
                .into_iter()
                .flatten()
                .collect(),
        )
    }

    /// Whether a seccomp filter is attached to the process.
    fn seccomp_filtered(&self) -> bool {
        self.seccomp_mode == Some(2) || self.seccomp_filters.is_some_and(|n| n > 0)
    }

    /// Active security modules that can refuse bpf(), each with what to look at.
    fn refusing_lsms(&self) -> Vec<String> {
        let mut found = Vec::new();
        let listed = |name: &str| self.lsms.as_ref().is_some_and(|l| l.iter().any(|m| m == name));
        if let Some(profile) = &self.apparmor_profile {
            if profile != "unconfined" {
                found.push(format!(
                    "AppArmor profile `{profile}` (a denial shows as `apparmor=\"DENIED\"` in the \
                     kernel log)"
                ));
            }
        } else if listed("apparmor") {
            found.push("AppArmor (active; this process's profile could not be read)".to_owned());
        }
        if self.selinux_enforcing == Some(true) {
            found.push(
                "SELinux, enforcing (a denial shows as an `avc: denied { ... } for ... \
                 tclass=bpf` record in the audit log)"
                    .to_owned(),
            );
        }
        if listed("bpf") {
            found.push(
                "the BPF LSM (a loaded BPF-LSM program, e.g. of a runtime security agent, may \
                 deny bpf())"
                    .to_owned(),
            );
        }
        found
    }
}

fn parse_lsms(list: &str) -> Vec<String> {
    list.trim_end_matches(['\0', '\n'])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a failure is, in the order [`diagnose`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Refused: the process lacks these capabilities.
    Capabilities(Vec<&'static str>),
    /// Refused, and a seccomp filter is attached with the capabilities present: the filter is
    /// the likely refuser (a container runtime's default profile denies bpf()). The LSMs that
    /// could refuse too, if the profile allows bpf().
    Seccomp { filters: Option<u32>, lsms: Vec<String> },
    /// Refused with the capabilities present and no seccomp filter: a security module.
    Lsm(Vec<String>),
    /// Refused, and nothing this process can read explains it.
    Refused,
    /// The kernel is older than the operation needs.
    KernelTooOld { has: Version, needs: Version },
    /// The kernel rejected the operation although it is recent enough (or its version is
    /// unknown): a kernel built without the feature, or a program the verifier refused.
    Unsupported { has: Option<Version>, needs: Version },
    /// Any other error number.
    Other(i32),
    /// The error carries no error number.
    Unknown,
}

/// A cause, with the sentence that explains it and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub cause: Cause,
    pub detail: String,
    pub fix: Option<String>,
}

/// The errno of the first `io::Error` in `err`'s chain of sources.
pub fn errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        next = e.source();
    }
    None
}

/// Why an operation that needs Linux `needs` failed with `errno`, given `facts`.
pub fn diagnose(errno: Option<i32>, needs: Version, facts: &Facts) -> Diagnosis {
    let Some(code) = errno else {
        return diagnosis(Cause::Unknown, "the error carries no error number".to_owned(), None);
    };
    let refused = code == EPERM || code == EACCES;
    // ENOSYS under a seccomp filter is the filter's default answer, not a missing syscall.
    if refused || (code == ENOSYS && facts.seccomp_filtered()) {
        return refusal(code, facts);
    }
    let feature = matches!(code, libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | ENOSYS | ENOTSUPP);
    if !feature {
        let detail = format!("failed with {}", name(code));
        return diagnosis(Cause::Other(code), detail, None);
    }
    match facts.kernel {
        Some(has) if has < needs => diagnosis(
            Cause::KernelTooOld { has, needs },
            format!("Linux {has} lacks it ({}): it needs Linux {needs}", name(code)),
            Some(format!("upgrade to Linux {needs} or later")),
        ),
        has => {
            let kernel = match has {
                Some(v) => format!("Linux {v} is new enough (it needs {needs})"),
                None => format!("the kernel version is unknown (it needs {needs})"),
            };
            diagnosis(
                Cause::Unsupported { has, needs },
                format!(
                    "the kernel rejected it with {}, not a refusal: {kernel}, so it was built \
                     without the feature or its verifier refused the program",
                    name(code)
                ),
                Some(
                    "check the kernel config (CONFIG_BPF_SYSCALL, CONFIG_BPF_JIT) and the \
                     verifier log above; run `reuselb doctor` with RUST_LOG=debug"
                        .to_owned(),
                ),
            )
        }
    }
}

fn refusal(code: i32, facts: &Facts) -> Diagnosis {
    let refused = format!("refused with {}, not a missing kernel feature", name(code));
    let lsms = facts.refusing_lsms();
    if let Some(missing) = facts.missing_capabilities().filter(|m| !m.is_empty()) {
        let mut detail = format!("{refused}: the process lacks {}", missing.join(" and "));
        if let Some(n @ 1..) = facts.unprivileged_bpf_disabled {
            detail += &format!(
                " (kernel.unprivileged_bpf_disabled={n}: bpf() needs CAP_BPF; SK_REUSEPORT \
                 programs need it whatever the sysctl)"
            );
        }
        return diagnosis(
            Cause::Capabilities(missing),
            detail,
            Some(
                "run as root, or grant CAP_BPF and CAP_PERFMON (systemd: \
                 AmbientCapabilities=CAP_BPF CAP_PERFMON; podman: --cap-add BPF --cap-add \
                 PERFMON; Kubernetes: securityContext.capabilities.add [BPF, PERFMON])"
                    .to_owned(),
            ),
        );
    }
    if facts.seccomp_filtered() {
        let filters = facts.seccomp_filters;
        let count = filters.map_or_else(|| "a".to_owned(), |n| n.to_string());
        let mut detail = format!(
            "{refused}: the capabilities are there, but {count} seccomp filter(s) are attached \
             (Seccomp: 2 in /proc/self/status), and a container runtime's default profile \
             denies bpf() to a container without CAP_SYS_ADMIN"
        );
        if !lsms.is_empty() {
            detail += &format!("; if the profile allows bpf(), look at {}", lsms.join("; "));
        }
        return diagnosis(
            Cause::Seccomp { filters, lsms },
            detail,
            Some(
                "run with a seccomp profile that allows bpf(): deploy/seccomp/reuselb.json \
                 (podman: --security-opt seccomp=reuselb.json; Kubernetes: seccompProfile \
                 type Localhost), not privileged mode or an unconfined profile"
                    .to_owned(),
            ),
        );
    }
    if !lsms.is_empty() {
        let detail = format!(
            "{refused}: the capabilities are there and no seccomp filter is attached; a \
             security module refused it: {}",
            lsms.join("; ")
        );
        return diagnosis(
            Cause::Lsm(lsms),
            detail,
            Some(
                "allow bpf (map_create, prog_load) for reuselb in that module's policy".to_owned(),
            ),
        );
    }
    let mut unknown = Vec::new();
    if facts.cap_eff.is_none() {
        unknown.push("the capabilities (CapEff)");
    }
    if facts.seccomp_mode.is_none() {
        unknown.push("the seccomp mode");
    }
    if facts.lsms.is_none() {
        unknown.push("the security modules (/sys/kernel/security/lsm; securityfs not mounted)");
    }
    let detail = if unknown.is_empty() {
        format!(
            "{refused}: the capabilities are there, no seccomp filter, no security module that \
             confines this process"
        )
    } else {
        format!("{refused}; could not read {}", unknown.join(", "))
    };
    diagnosis(
        Cause::Refused,
        detail,
        Some(
            "look for a denial in the kernel and audit logs (dmesg, journalctl -k, \
             /var/log/audit/audit.log)"
                .to_owned(),
        ),
    )
}

fn diagnosis(cause: Cause, detail: String, fix: Option<String>) -> Diagnosis {
    Diagnosis { cause, detail, fix }
}

/// `EPERM (Operation not permitted)`.
fn name(code: i32) -> String {
    let symbol = match code {
        EPERM => "EPERM",
        EACCES => "EACCES",
        ENOSYS => "ENOSYS",
        ENOTSUPP => "ENOTSUPP",
        libc::EINVAL => "EINVAL",
        libc::E2BIG => "E2BIG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {code} ({})", text(code)),
    };
    format!("{symbol} ({})", text(code))
}

/// The C library's text for an errno, without Rust's ` (os error N)`.
fn text(code: i32) -> String {
    if code == ENOTSUPP {
        return "operation not supported".to_owned();
    }
    let text = io::Error::from_raw_os_error(code).to_string();
    text.split(" (os error").next().unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: Version = Version(6, 18);
    const NEEDS: Version = Version(5, 17);
    /// CapEff of a container with CAP_BPF and CAP_PERFMON only.
    const BPF_PERFMON: &str = "000000c000000000";

    /// A podman container with CAP_BPF + CAP_PERFMON under the runtime's default profile.
    fn container(cap_eff: &str, seccomp: u32, filters: u32) -> Facts {
        let mut facts = Facts { kernel: Some(KERNEL), ..Facts::default() };
        facts.add_status(&format!(
            "Name:\treuselb\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\nNoNewPrivs:\t1\n\
             Seccomp:\t{seccomp}\nSeccomp_filters:\t{filters}\nSpeculation_Store_Bypass:\tthread vulnerable\n"
        ));
        facts
    }

    #[test]
    fn status_lines_are_read() {
        let facts = container(BPF_PERFMON, 2, 1);
        assert_eq!(facts.cap_eff, Some(0xc0_0000_0000));
        assert_eq!(facts.seccomp_mode, Some(2));
        assert_eq!(facts.seccomp_filters, Some(1));
        assert_eq!(facts.missing_capabilities(), Some(vec![]));
    }

    #[test]
    fn kernel_release_is_parsed() {
        assert_eq!(Version::from_release("6.18.44-fc-v857\n"), Some(Version(6, 18)));
        assert_eq!(Version::from_release("5.4.0-150-generic"), Some(Version(5, 4)));
        assert_eq!(Version::from_release("garbage"), None);
    }

    #[test]
    fn eperm_under_a_seccomp_filter_names_seccomp_not_the_kernel() {
        let d = diagnose(Some(libc::EPERM), NEEDS, &container(BPF_PERFMON, 2, 1));
        assert_eq!(d.cause, Cause::Seccomp { filters: Some(1), lsms: vec![] });
        assert!(d.detail.contains("seccomp"), "{}", d.detail);
        assert!(d.detail.contains("not a missing kernel feature"), "{}", d.detail);
        let fix = d.fix.unwrap();
        assert!(fix.contains("deploy/seccomp/reuselb.json"), "{fix}");
        assert!(!fix.contains("upgrade"), "{fix}");
    }

    #[test]
    fn enosys_under_a_seccomp_filter_is_the_filter() {
        let d = diagnose(Some(libc::ENOSYS), NEEDS, &container(BPF_PERFMON, 2, 3));
        assert_eq!(d.cause, Cause::Seccomp { filters: Some(3), lsms: vec![] });
    }

    #[test]
    fn missing_capabilities_come_first() {
        let mut facts = container("0000000000000000", 2, 1);
        facts.unprivileged_bpf_disabled = Some(2);
        let d = diagnose(Some(libc::EPERM), NEEDS, &facts);
        assert_eq!(d.cause, Cause::Capabilities(vec!["CAP_BPF", "CAP_PERFMON"]));
        assert!(d.detail.contains("unprivileged_bpf_disabled=2"), "{}", d.detail);
        // CAP_BPF alone: the verifier's EACCES for want of CAP_PERFMON.
        let d = diagnose(Some(libc::EACCES), NEEDS, &container("0000008000000000", 0, 0));
        assert_eq!(d.cause, Cause::Capabilities(vec!["CAP_PERFMON"]));
        // CAP_SYS_ADMIN stands in for both.
        let d = diagnose(Some(libc::EPERM), NEEDS, &container("0000000000200000", 2, 1));
        assert!(matches!(d.cause, Cause::Seccomp { .. }), "{:?}", d.cause);
    }

    #[test]
    fn without_seccomp_an_lsm_is_named() {
        let mut facts = container(BPF_PERFMON, 0, 0);
        facts.lsms = Some(parse_lsms("lockdown,capability,yama,apparmor,bpf\n"));
        facts.apparmor_profile = Some("cri-containerd.apparmor.d (enforce)".to_owned());
        let d = diagnose(Some(libc::EPERM), NEEDS, &facts);
        let Cause::Lsm(lsms) = &d.cause else { panic!("{:?}", d.cause) };
        assert_eq!(lsms.len(), 2, "{lsms:?}");
        assert!(d.detail.contains("cri-containerd.apparmor.d"), "{}", d.detail);
        assert!(d.detail.contains("BPF LSM"), "{}", d.detail);

        let mut facts = container(BPF_PERFMON, 0, 0);
        facts.selinux_enforcing = Some(true);
        let d = diagnose(Some(libc::EACCES), NEEDS, &facts);
        assert!(matches!(&d.cause, Cause::Lsm(l) if l[0].contains("SELinux")), "{:?}", d.cause);
    }

    #[test]
    fn an_unconfined_apparmor_profile_is_no_suspect() {
        let mut facts = container(BPF_PERFMON, 0, 0);
        facts.lsms = Some(parse_lsms("capability,apparmor"));
        facts.apparmor_profile = Some("unconfined".to_owned());
        let d = diagnose(Some(libc::EPERM), NEEDS, &facts);
        assert_eq!(d.cause, Cause::Refused);
        assert!(d.detail.contains("no security module"), "{}", d.detail);
    }

    #[test]
    fn seccomp_with_an_lsm_names_both() {
        let mut facts = container(BPF_PERFMON, 2, 1);
        facts.selinux_enforcing = Some(true);
        let d = diagnose(Some(libc::EPERM), NEEDS, &facts);
        assert!(matches!(&d.cause, Cause::Seccomp { lsms, .. } if lsms.len() == 1));
        assert!(d.detail.contains("SELinux"), "{}", d.detail);
    }

    #[test]
    fn unreadable_facts_are_said() {
        let d = diagnose(Some(libc::EPERM), NEEDS, &Facts::default());
        assert_eq!(d.cause, Cause::Refused);
        assert!(d.detail.contains("could not read the capabilities"), "{}", d.detail);
    }

    #[test]
    fn an_upgrade_is_advised_only_on_an_older_kernel() {
        let mut facts = container(BPF_PERFMON, 0, 0);
        for code in [libc::EINVAL, libc::E2BIG, libc::ENOSYS, ENOTSUPP] {
            let d = diagnose(Some(code), NEEDS, &facts);
            assert_eq!(d.cause, Cause::Unsupported { has: Some(KERNEL), needs: NEEDS });
            assert!(!d.fix.as_deref().unwrap_or("").contains("upgrade"), "{:?}", d.fix);
            assert!(d.detail.contains("Linux 6.18 is new enough"), "{}", d.detail);
        }
        facts.kernel = Some(Version(5, 10));
        let d = diagnose(Some(libc::EINVAL), NEEDS, &facts);
        assert_eq!(d.cause, Cause::KernelTooOld { has: Version(5, 10), needs: NEEDS });
        assert_eq!(d.fix.as_deref(), Some("upgrade to Linux 5.17 or later"));
        // A refusal on an old kernel is still a refusal.
        let mut facts = container(BPF_PERFMON, 2, 1);
        facts.kernel = Some(Version(5, 10));
        let d = diagnose(Some(libc::EPERM), NEEDS, &facts);
        assert!(matches!(d.cause, Cause::Seccomp { .. }), "{:?}", d.cause);
    }

    #[test]
    fn other_errors_and_no_errno() {
        let facts = container(BPF_PERFMON, 0, 0);
        assert_eq!(diagnose(Some(libc::ENOMEM), NEEDS, &facts).cause, Cause::Other(libc::ENOMEM));
        assert_eq!(diagnose(None, NEEDS, &facts).cause, Cause::Unknown);
    }

    #[test]
    fn the_errno_is_found_down_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let err = Outer(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(errno(&err), Some(libc::EPERM));
        let err = balancer_user::Error::Socket { op: "bind", source: io::Error::other("no errno") };
        assert_eq!(errno(&err), None);
    }
}
