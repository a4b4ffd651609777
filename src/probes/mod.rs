//! Liveness and readiness probes with Kubernetes/KubeVirt semantics.

pub mod config;
