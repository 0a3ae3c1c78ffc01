//! Loads a stack file and prints its errors, warnings or objects as YAML:
//! `cargo run -p shoal-crd --example check_stack -- FILE [STACK]`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(args.get(1).expect("usage: check_stack FILE [STACK]"));
    let stack = args.get(2).map_or("demo", String::as_str);
    match shoal_crd::load_stack(path, stack, &|k| std::env::var(k).ok()) {
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            for svc in &s.services {
                println!("---\n{}", shoal_crd::yaml::to_string(svc).expect("serializable"));
            }
            for c in &s.configs {
                println!("---\n{}", shoal_crd::yaml::to_string(c).expect("serializable"));
            }
        }
    }
}
