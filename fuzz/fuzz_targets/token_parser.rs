//! Bearer tokens as anyone may send them: parsing never panics, what it accepts prints
//! back as the same text and never shows its secret in debug output, and the directory
//! grants only the one real token (any other id or secret, however close, opens nothing).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use node::tenancy::Directory;
use node::tenancy::directory::secret_digest;
use proto::catalog::Stamp;
use proto::tenancy::{Role, TenancyRecord, TenantRecord, TokenRecord, TokenText};

const REAL: &str =
    "stratus_0123456789abcdef_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn directory() -> &'static Directory {
    static DIRECTORY: OnceLock<Directory> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let real = TokenText::parse(REAL).expect("the real token parses");
        let stamp = Stamp {
            wall_ms: 1,
            counter: 0,
            node_id: "n1".into(),
        };
        let mut directory = Directory::default();
        directory.merge(TenancyRecord::Tenant(TenantRecord {
            name: "acme".into(),
            stamp: stamp.clone(),
            deleted: false,
            isolation: Default::default(),
            quota: Default::default(),
            created_at_ms: 0,
        }));
        directory.merge(TenancyRecord::Token(TokenRecord {
            id: real.id.clone(),
            stamp,
            tenant: "acme".into(),
            role: Role::Deploy,
            name: None,
            secret_sha256: secret_digest(&real.secret),
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
        }));
        directory
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = TokenText::parse(text) else {
        assert_ne!(text, REAL);
        return;
    };
    assert_eq!(token.to_string(), text);
    assert!(!format!("{token:?}").contains(&token.secret));
    let granted = directory().authenticate(&token, 0).is_ok();
    assert_eq!(granted, text == REAL, "{text}");
});
