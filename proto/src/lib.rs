//! The gRPC contract of the license ledger, package `license.v1`, generated at build time
//! from `license/v1/license.proto` without protoc.

#![allow(clippy::all, clippy::pedantic)]

pub mod license {
    pub mod v1 {
        tonic::include_proto!("license.v1");
    }
}

pub use license::v1::*;

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/license_descriptor.bin"));
