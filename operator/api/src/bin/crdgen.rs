//! Prints the OrderPipeline CRD as YAML (`cargo xtask crdgen` writes it to `crds/`).

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", pipeline_api::crd_yaml()?);
    Ok(())
}
