pub mod ditto;
pub mod memcached;
