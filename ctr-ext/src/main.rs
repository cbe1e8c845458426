//! `ctr-obd`: ctr extensions for overlaybd images (being written).

fn main() {
    eprintln!("ctr-obd: not built yet");
    std::process::exit(1);
}
