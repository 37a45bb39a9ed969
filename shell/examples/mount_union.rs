//! Mounts a union by hand: mount_union MOUNT UPPER WHITEOUTS LOWER (Ctrl-C unmounts).
fn main() -> std::io::Result<()> {
    let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let [mount, upper, whiteouts, lower] = &args[..] else {
        eprintln!("usage: mount_union MOUNT UPPER WHITEOUTS LOWER");
        std::process::exit(2);
    };
    let mounted = unionsync::union::mount(
        mount,
        upper,
        whiteouts,
        lower,
        Vec::new(),
        Default::default(),
    )?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    mounted.unmount()
}
