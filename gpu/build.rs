//! Generates the Rust declarations of the shim's C ABI from `shim/sabot_cudf.h` (plain C:
//! no libcudf or CUDA headers are needed here).

fn main() {
    let header = "shim/sabot_cudf.h";
    println!("cargo:rerun-if-changed={header}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindgen::Builder::default()
        .header(header)
        .allowlist_function("sabot_cudf_.*")
        .allowlist_type("sabot_cudf_.*")
        .allowlist_var("SABOT_CUDF_.*")
        // Arrow's own FFI structs are layout-identical; the safe layer casts to them.
        .allowlist_type("Arrow(Schema|Array)")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        // Function pointers, loaded from the library at run time, not linked.
        .dynamic_library_name("SabotCudf")
        .dynamic_link_require_all(true)
        .layout_tests(false)
        .generate()
        .expect("bindgen reads shim/sabot_cudf.h")
        .write_to_file(out.join("bindings.rs"))
        .expect("OUT_DIR is writable");
}
