//! Values the unit tests of several verbs share, so a new field of an API
//! type is filled in once.

use wedge_control::api::VersionRecord;

/// Version `version` of `function`: route `/<function>`, a 100-byte
/// artifact `0123456789abcdef`, deployed at the epoch, and no limits,
/// config, env or outbound hosts.
pub fn version_record(function: &str, version: u64) -> VersionRecord {
    VersionRecord {
        function: function.into(),
        version,
        artifact: "0123456789abcdef".into(),
        artifact_bytes: 100,
        routes: vec![format!("/{function}")],
        limits: Default::default(),
        config: Default::default(),
        env: Default::default(),
        allowed_outbound_hosts: Vec::new(),
        created_unix_ms: 0,
        replicas: Default::default(),
        queue: None,
        cache: None,
    }
}
