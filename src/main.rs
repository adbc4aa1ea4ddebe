//! The `eddy` binary: everything is in the library; see `eddy::cli`.

fn main() -> std::process::ExitCode {
    eddy::cli::main()
}
