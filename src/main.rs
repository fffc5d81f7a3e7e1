//! selfret: with no arguments the desktop app opens; subcommands run the same jobs headless.

use clap::Parser;
use selfret::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    // `selfret query ... | head` should end quietly when the reader goes, as other command-line
    // tools do, not panic in println! (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    selfret::kernels::pin_thread_count();
    selfret::kernels::tune_allocator();
    selfret::kernels::blas_ffi::choose_openblas_kernels();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Cli::parse();
    match args.command {
        None => selfret::app::run(Default::default()),
        Some(Command::Gui(a)) => selfret::app::run(a.startup()),
        Some(Command::Index(a)) => cli::index(a),
        Some(Command::Query(a)) => cli::query(a),
        Some(Command::FetchModel) => cli::fetch_model(),
        Some(Command::Eval(a)) => cli::eval(a),
        Some(Command::Tune(a)) => cli::tune(a),
        Some(Command::Bench(a)) => cli::bench::run(a),
        Some(Command::PseudoQueries(a)) => cli::pseudo_queries(a),
        Some(Command::Titles(a)) => cli::titles(a),
        Some(Command::Docids(a)) => cli::docids(a),
        Some(Command::Export(a)) => cli::export(a),
        Some(Command::ExportData(a)) => cli::export_data(a),
    }
}
