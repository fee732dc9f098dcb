//! Generates the `protobuf` envelope's code from proto/envelope.proto, the file shipped for
//! clients: protox parses it (no protoc binary needed), prost-build writes the Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/envelope.proto");
    let descriptors = protox::compile(["envelope.proto"], ["proto"])?;
    prost_build::Config::new()
        // `body` as `Bytes`: decoding a frame slices the body out of it instead of copying.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
