//! Images an app names (`image = "..."`): when to pull them. Nodes never pull on their own
//! account: the node that accepts the deploy gets the image once (from its own Docker, from
//! a peer's, or from the registry, as the policy allows) and files it in the store like a
//! built image, so every other node loads it from the cluster.

use std::str::FromStr;

/// `--image-pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImagePull {
    /// Only images already in the cluster.
    Never,
    /// The cluster's copy if there is one, else the registry's.
    #[default]
    IfMissing,
    /// Always the registry's (a tag may have moved).
    Always,
}

impl FromStr for ImagePull {
    type Err = ();

    fn from_str(text: &str) -> Result<ImagePull, ()> {
        match text {
            "never" => Ok(ImagePull::Never),
            "if-missing" => Ok(ImagePull::IfMissing),
            "always" => Ok(ImagePull::Always),
            _ => Err(()),
        }
    }
}

/// Where the accepting node gets a named image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// Its own Docker has it.
    Local,
    /// The registry.
    Pull,
    /// Nowhere: the policy forbids the pull it would need.
    Missing,
}

/// The decision, from the policy and whether this node's Docker has the image. A copy held
/// in the cluster (an earlier release's archive) counts as local once it is loaded.
pub fn source(policy: ImagePull, have_locally: bool) -> ImageSource {
    match (policy, have_locally) {
        (ImagePull::Always, _) => ImageSource::Pull,
        (_, true) => ImageSource::Local,
        (ImagePull::IfMissing, false) => ImageSource::Pull,
        (ImagePull::Never, false) => ImageSource::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_decides_between_the_local_copy_and_the_registry() {
        assert_eq!(source(ImagePull::IfMissing, true), ImageSource::Local);
        assert_eq!(source(ImagePull::IfMissing, false), ImageSource::Pull);
        assert_eq!(source(ImagePull::Never, true), ImageSource::Local);
        assert_eq!(source(ImagePull::Never, false), ImageSource::Missing);
        assert_eq!(source(ImagePull::Always, true), ImageSource::Pull);
        assert_eq!(source(ImagePull::Always, false), ImageSource::Pull);
        assert_eq!("if-missing".parse(), Ok(ImagePull::IfMissing));
        assert!("sometimes".parse::<ImagePull>().is_err());
    }
}
