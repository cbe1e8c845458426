use std::process::ExitCode;

fn main() -> ExitCode {
    backstore::tools::apply::main()
}
