use std::process::ExitCode;

fn main() -> ExitCode {
    backstore::tools::attach::main()
}
