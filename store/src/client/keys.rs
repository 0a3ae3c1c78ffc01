//! Key layout: `{prefix}/{plural}/{name}`, one key per object.

use shoal_crd::Resource;

/// The key of one object.
pub fn object_key<R: Resource>(prefix: &str, name: &str) -> String {
    format!("{}/{}/{}", prefix.trim_end_matches('/'), R::PLURAL, name)
}

/// The prefix of all objects of one kind (ends with `/`).
pub fn kind_prefix<R: Resource>(prefix: &str) -> String {
    format!("{}/{}/", prefix.trim_end_matches('/'), R::PLURAL)
}

/// etcd's range_end for "every key starting with `prefix`".
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_increments_the_last_byte() {
        assert_eq!(prefix_range_end(b"/shoal/"), b"/shoal0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }
}
