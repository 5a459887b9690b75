fn main() -> std::process::ExitCode {
    wxgate::cli::main()
}
