//! The `lb-lab` command (`lb_lab::cli`).

fn main() -> anyhow::Result<()> {
    lb_lab::cli::main()
}
