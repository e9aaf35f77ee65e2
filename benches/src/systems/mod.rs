pub mod ditto;
