//! Empty on the host: the programs are the `balancer-ebpf` binary target, built for BPF by
//! `balancer-user`'s build script. This library target only lets that crate depend on us.
#![no_std]
