//! The `lb` command (`lb_userspace::cli`).

fn main() -> anyhow::Result<()> {
    lb_userspace::cli::main()
}
