//! Compiles `pixelquery/v1/*.proto` with Debian's (or any) `protoc`.
fn main() -> std::io::Result<()> {
    let protos = ["pixelquery/v1/pixelquery.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    prost_build::Config::new().compile_protos(&protos, &["."])
}
