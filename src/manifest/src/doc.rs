//! The parts of KubeVirt's `VirtualMachine` schema vmpulse reads, as serde types.
//!
//! Every field is optional and wrapped in [`Lenient`], so one field of the wrong
//! type does not stop the others from being read: the validator reports each
//! problem with its path. Keys a struct does not model land in its `other` map;
//! each struct lists the KubeVirt fields it knows but vmpulse does not use
//! (`KNOWN_UNUSED`), and anything else is an unknown field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_yaml_ng::{Mapping, Value};

/// A field value that either deserialized as `T` or failed with a message.
#[derive(Clone, Debug)]
pub enum Lenient<T> {
    /// The value, typed.
    Ok(T),
    /// The value did not fit `T`.
    Bad {
        /// Where inside the value the error is (`""` for the value itself,
        /// else e.g. `[1].port`).
        path: String,
        /// serde's message, e.g. `invalid type: string "x", expected i64`.
        message: String,
    },
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Lenient::Ok(t),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." {
                    String::new()
                } else if path.starts_with('[') {
                    path
                } else {
                    format!(".{path}")
                };
                Lenient::Bad {
                    path,
                    message: e.into_inner().to_string(),
                }
            }
        })
    }
}

/// An optional, lenient field.
pub type Field<T> = Option<Lenient<T>>;

/// The whole manifest.
#[derive(Debug, Deserialize)]
pub struct VirtualMachine {
    #[serde(rename = "apiVersion")]
    pub api_version: Field<String>,
    pub kind: Field<String>,
    pub metadata: Field<Metadata>,
    pub spec: Field<VirtualMachineSpec>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl VirtualMachine {
    pub const KNOWN_UNUSED: &'static [&'static str] = &["status"];
}

/// `metadata` (ObjectMeta).
#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub name: Field<String>,
    pub annotations: Field<Mapping>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Metadata {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[
        "namespace",
        "labels",
        "generateName",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    ];
}

/// `spec` of the VirtualMachine.
#[derive(Debug, Deserialize)]
pub struct VirtualMachineSpec {
    pub running: Field<bool>,
    #[serde(rename = "runStrategy")]
    pub run_strategy: Field<String>,
    pub template: Field<Template>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl VirtualMachineSpec {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[
        "instancetype",
        "preference",
        "dataVolumeTemplates",
        "updateVolumesStrategy",
    ];
}

/// `spec.template`.
#[derive(Debug, Deserialize)]
pub struct Template {
    pub spec: Field<VmiSpec>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Template {
    pub const KNOWN_UNUSED: &'static [&'static str] = &["metadata"];
}

/// `spec.template.spec` (VirtualMachineInstanceSpec).
#[derive(Debug, Deserialize)]
pub struct VmiSpec {
    pub domain: Field<Domain>,
    #[serde(rename = "livenessProbe")]
    pub liveness_probe: Field<Probe>,
    #[serde(rename = "readinessProbe")]
    pub readiness_probe: Field<Probe>,
    #[serde(rename = "terminationGracePeriodSeconds")]
    pub termination_grace_period_seconds: Field<i64>,
    /// Walked separately to list each volume's source as ignored.
    pub volumes: Field<Vec<Mapping>>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl VmiSpec {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[
        "networks",
        "nodeSelector",
        "affinity",
        "tolerations",
        "topologySpreadConstraints",
        "hostname",
        "subdomain",
        "evictionStrategy",
        "startStrategy",
        "schedulerName",
        "priorityClassName",
        "accessCredentials",
        "dnsConfig",
        "dnsPolicy",
        "architecture",
        "resourceClaims",
    ];
}

/// `domain`.
#[derive(Debug, Deserialize)]
pub struct Domain {
    pub resources: Field<Resources>,
    pub memory: Field<Memory>,
    pub devices: Field<Devices>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Domain {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[
        "cpu",
        "machine",
        "firmware",
        "clock",
        "features",
        "chassis",
        "ioThreadsPolicy",
        "ioThreads",
        "launchSecurity",
    ];
}

/// `domain.resources`.
#[derive(Debug, Deserialize)]
pub struct Resources {
    /// A ResourceList: any resource name is allowed; only `memory` is used.
    pub requests: Field<Mapping>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Resources {
    pub const KNOWN_UNUSED: &'static [&'static str] = &["limits", "overcommitGuestOverhead"];
}

/// `domain.memory`.
#[derive(Debug, Deserialize)]
pub struct Memory {
    pub guest: Option<Value>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Memory {
    pub const KNOWN_UNUSED: &'static [&'static str] = &["hugepages", "maxGuest"];
}

/// `domain.devices`.
#[derive(Debug, Deserialize)]
pub struct Devices {
    pub watchdog: Field<Watchdog>,
    pub interfaces: Field<Vec<Interface>>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Devices {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[
        "disks",
        "rng",
        "inputs",
        "gpus",
        "filesystems",
        "hostDevices",
        "clientPassthrough",
        "sound",
        "tpm",
        "video",
        "panicDevices",
        "autoattachPodInterface",
        "autoattachGraphicsDevice",
        "autoattachSerialConsole",
        "autoattachMemBalloon",
        "autoattachInputDevice",
        "autoattachVSOCK",
        "useVirtioTransitional",
        "blockMultiQueue",
        "networkInterfaceMultiqueue",
        "disableHotplug",
        "logSerialConsole",
        "downwardMetrics",
        "downwardAPI",
    ];
}

/// `devices.watchdog`.
#[derive(Debug, Deserialize)]
pub struct Watchdog {
    pub name: Field<String>,
    pub i6300esb: Field<I6300Esb>,
    pub diag288: Option<Value>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Watchdog {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[];
}

/// `watchdog.i6300esb`.
#[derive(Debug, Deserialize)]
pub struct I6300Esb {
    pub action: Field<String>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl I6300Esb {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[];
}

/// `devices.interfaces[]`: only the ports are read (for named probe ports).
#[derive(Debug, Deserialize)]
pub struct Interface {
    pub ports: Field<Vec<Port>>,
}

/// `interfaces[].ports[]`.
#[derive(Debug, Deserialize)]
pub struct Port {
    pub name: Field<String>,
    pub port: Field<i64>,
}

/// A liveness or readiness probe.
#[derive(Debug, Deserialize)]
pub struct Probe {
    #[serde(rename = "initialDelaySeconds")]
    pub initial_delay_seconds: Field<i64>,
    #[serde(rename = "periodSeconds")]
    pub period_seconds: Field<i64>,
    #[serde(rename = "timeoutSeconds")]
    pub timeout_seconds: Field<i64>,
    #[serde(rename = "successThreshold")]
    pub success_threshold: Field<i64>,
    #[serde(rename = "failureThreshold")]
    pub failure_threshold: Field<i64>,
    #[serde(rename = "httpGet")]
    pub http_get: Field<HttpGet>,
    #[serde(rename = "tcpSocket")]
    pub tcp_socket: Field<TcpSocket>,
    pub exec: Field<Exec>,
    #[serde(rename = "guestAgentPing")]
    pub guest_agent_ping: Field<Mapping>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl Probe {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[];
}

/// `httpGet`.
#[derive(Debug, Deserialize)]
pub struct HttpGet {
    pub path: Field<String>,
    pub port: Option<Value>,
    pub host: Field<String>,
    pub scheme: Field<String>,
    #[serde(rename = "httpHeaders")]
    pub http_headers: Field<Vec<Header>>,
    #[serde(flatten)]
    pub other: Mapping,
}

impl HttpGet {
    pub const KNOWN_UNUSED: &'static [&'static str] = &[];
}

/// `httpGet.httpHeaders[]`.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub name: Field<String>,
    pub value: Field<String>,
    #[serde(flatten)]
    pub other: Mapping,
}

/// `tcpSocket`.
#[derive(Debug, Deserialize)]
pub struct TcpSocket {
    pub port: Option<Value>,
    pub host: Field<String>,
    #[serde(flatten)]
    pub other: Mapping,
}

/// `exec`.
#[derive(Debug, Deserialize)]
pub struct Exec {
    pub command: Field<Vec<String>>,
    #[serde(flatten)]
    pub other: Mapping,
}
