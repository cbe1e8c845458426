//! Generates the libext2fs bindings from the system headers (Debian: `libext2fs-dev`).

fn main() {
    let ext2fs = match pkg_config::Config::new().probe("ext2fs") {
        Ok(l) => l,
        Err(e) => panic!("libext2fs not found ({e}); install it with: apt-get install libext2fs-dev"),
    };
    let com_err = pkg_config::Config::new().probe("com_err").ok();
    println!("cargo:rerun-if-changed=wrapper.h");
    let includes = ext2fs.include_paths.iter().chain(com_err.iter().flat_map(|l| l.include_paths.iter()));
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(includes.map(|p| format!("-I{}", p.display())))
        .allowlist_function("ext2fs_.*|io_channel_.*|error_message|initialize_ext2_error_table|add_error_table")
        .allowlist_type(
            "ext2_filsys|struct_io_manager|struct_io_channel|ext2_inode.*|ext2_super_block|ext2_dir_entry.*",
        )
        .allowlist_var(
            "EXT2_.*|EXT3_.*|EXT4_.*|LINUX_S_.*|IO_FLAG_.*|CHANNEL_FLAGS_.*|BLOCK_FLAG_.*|DIRENT_.*|XATTR_.*",
        )
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| panic!("generating the libext2fs bindings failed: {e}"));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("bindings.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
