use which::which;

/// Rebuild when bpf-linker changes: it is the linker of this crate's binary, which cargo cannot see.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
