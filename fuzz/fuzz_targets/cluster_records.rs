//! What a node reads from the cluster's Redis: access snapshots and node records. Whatever
//! is stored there, decoding gives an error or a value that encodes and decodes to itself.

#![no_main]

use callbox_cluster::{AccessWire, NodeInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((version, wire)) = AccessWire::decode(json) {
        assert_eq!(version.len(), 64);
        let (again, _) = wire.encode();
        assert_eq!(AccessWire::decode(&again).unwrap().1, wire);
    }
    if let Ok(node) = NodeInfo::decode(json) {
        let again = serde_json::to_string(&node).unwrap();
        assert_eq!(NodeInfo::decode(&again).unwrap(), node);
    }
});
