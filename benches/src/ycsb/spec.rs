//! The workload's settings, read and checked from YCSB core-workload properties.
//!
//! Names and defaults are YCSB's (`CoreWorkload`, `Client`), with these differences:
//! * `zipfianconstant` (not a YCSB property; Scalio's workload files use it) sets θ of the
//!   `zipfian` request distribution, default 0.99. `latest` keeps YCSB's fixed 0.99.
//! * Bad values are errors naming the property, where YCSB sometimes falls back silently (a
//!   hotspot fraction outside [0, 1]) or treats anything but `hashed` as `ordered`.
//! * Scans (`scanproportion > 0`) are refused: a hash store cannot scan.
//! * Only `fieldlengthdistribution=constant` is supported.

use super::generator::{GeneratorError, ZIPFIAN_CONSTANT};
use super::keys::MAX_ZERO_PADDING;
use super::properties::Properties;

/// The largest record (`fieldcount × fieldlength`) accepted, 16 MiB.
pub const MAX_VALUE_LEN: u64 = 16 << 20;
/// What YCSB uses when `recordcount` is missing or 0 (`Integer.MAX_VALUE`).
pub const RECORD_COUNT_WHEN_ZERO: u64 = i32::MAX as u64;

/// A workload that cannot be built from its properties.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    #[error("property {name}={value:?} is not a valid {expected}")]
    InvalidNumber { name: &'static str, value: String, expected: &'static str },
    #[error("property {name}={value} is outside [0, 1]")]
    ProportionOutOfRange { name: &'static str, value: f64 },
    #[error(
        "property requestdistribution={0:?} is not a supported request distribution \
         (supported: uniform, zipfian, latest, hotspot)"
    )]
    UnknownDistribution(String),
    #[error("property insertorder={0:?} is neither hashed nor ordered")]
    UnknownInsertOrder(String),
    #[error(
        "scanproportion={0}: scans (YCSB workload E) are not supported: scalio is a hash store and \
         keeps no key order to scan; use a workload with scanproportion=0"
    )]
    ScanUnsupported(f64),
    #[error(
        "no operations to run: readproportion, updateproportion, insertproportion and \
         readmodifywriteproportion are all 0"
    )]
    NoOperations,
    #[error("property {name}={value:?}: {reason}")]
    InvalidValue { name: &'static str, value: String, reason: &'static str },
    #[error("cannot build the request distribution: {0}")]
    Distribution(#[from] GeneratorError),
    #[error("insertstart ({insert_start}) + insertcount ({insert_count}) is more than recordcount ({record_count})")]
    InsertRangeExceedsRecordCount { insert_start: u64, insert_count: u64, record_count: u64 },
}

/// Which keys requests go to (`requestdistribution`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestDistribution {
    /// Uniform over the loaded keys.
    Uniform,
    /// Scrambled zipfian over the loaded keys (and room for the expected inserts).
    Zipfian,
    /// Skewed towards the most recently inserted keys.
    Latest,
    /// A hot set of `data_fraction` of the keys gets `opn_fraction` of the requests.
    Hotspot { data_fraction: f64, opn_fraction: f64 },
}

/// How key numbers become key names (`insertorder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOrder {
    /// `"user" + fnvhash64(keynum)`: YCSB's default, inserts scattered over the key space.
    Hashed,
    /// `"user" + keynum`.
    Ordered,
}

/// The checked settings of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// `recordcount`: records loaded (default 0, which YCSB takes as 2^31 - 1).
    pub record_count: u64,
    /// `operationcount`: operations of the run phase, for the whole client (default 0).
    pub operation_count: u64,
    /// `insertstart`: first keynum of this client's slice (default 0).
    pub insert_start: u64,
    /// `insertcount`: keys in this client's slice (default `recordcount - insertstart`).
    pub insert_count: u64,
    /// `readproportion` (default 0.95).
    pub read_proportion: f64,
    /// `updateproportion` (default 0.05).
    pub update_proportion: f64,
    /// `insertproportion` (default 0).
    pub insert_proportion: f64,
    /// `readmodifywriteproportion` (default 0).
    pub read_modify_write_proportion: f64,
    /// `requestdistribution` (default uniform), with `hotspotdatafraction` (default 0.2) and
    /// `hotspotopnfraction` (default 0.8) for hotspot.
    pub request_distribution: RequestDistribution,
    /// `zipfianconstant` (default 0.99), θ of the zipfian request distribution.
    pub zipfian_constant: f64,
    /// `fieldcount` (default 10).
    pub field_count: u64,
    /// `fieldlength` (default 100).
    pub field_length: u64,
    /// `insertorder` (default hashed).
    pub insert_order: InsertOrder,
    /// `zeropadding` (default 1).
    pub zero_padding: usize,
}

impl WorkloadSpec {
    /// Reads the settings from `properties`, with YCSB's defaults for missing ones, and
    /// [checks](Self::validate) them.
    pub fn from_properties(properties: &Properties) -> Result<WorkloadSpec, WorkloadError> {
        let p = properties;
        let mut record_count = get_u64(p, "recordcount", 0)?;
        if record_count == 0 {
            record_count = RECORD_COUNT_WHEN_ZERO;
        }
        let operation_count = get_u64(p, "operationcount", 0)?;
        let insert_start = get_u64(p, "insertstart", 0)?;
        let insert_count = get_u64(p, "insertcount", record_count.saturating_sub(insert_start))?;

        let read_proportion = get_proportion(p, "readproportion", 0.95)?;
        let update_proportion = get_proportion(p, "updateproportion", 0.05)?;
        let insert_proportion = get_proportion(p, "insertproportion", 0.0)?;
        let scan_proportion = get_proportion(p, "scanproportion", 0.0)?;
        let read_modify_write_proportion = get_proportion(p, "readmodifywriteproportion", 0.0)?;
        if scan_proportion > 0.0 {
            return Err(WorkloadError::ScanUnsupported(scan_proportion));
        }

        let zipfian_constant = get_f64(p, "zipfianconstant", ZIPFIAN_CONSTANT)?;
        let request_distribution = match get_str(p, "requestdistribution").unwrap_or("uniform") {
            "uniform" => RequestDistribution::Uniform,
            "zipfian" => RequestDistribution::Zipfian,
            "latest" => RequestDistribution::Latest,
            "hotspot" => RequestDistribution::Hotspot {
                data_fraction: get_proportion(p, "hotspotdatafraction", 0.2)?,
                opn_fraction: get_proportion(p, "hotspotopnfraction", 0.8)?,
            },
            other => return Err(WorkloadError::UnknownDistribution(other.to_owned())),
        };

        let field_count = get_u64(p, "fieldcount", 10)?;
        let field_length = get_u64(p, "fieldlength", 100)?;
        if let Some(distribution) = get_str(p, "fieldlengthdistribution") {
            if distribution != "constant" {
                return Err(WorkloadError::InvalidValue {
                    name: "fieldlengthdistribution",
                    value: distribution.to_owned(),
                    reason: "only constant field lengths are supported",
                });
            }
        }
        let insert_order = match get_str(p, "insertorder").unwrap_or("hashed") {
            "hashed" => InsertOrder::Hashed,
            "ordered" => InsertOrder::Ordered,
            other => return Err(WorkloadError::UnknownInsertOrder(other.to_owned())),
        };
        let zero_padding = get_u64(p, "zeropadding", 1)?;

        let spec = WorkloadSpec {
            record_count,
            operation_count,
            insert_start,
            insert_count,
            read_proportion,
            update_proportion,
            insert_proportion,
            read_modify_write_proportion,
            request_distribution,
            zipfian_constant,
            field_count,
            field_length,
            insert_order,
            zero_padding: usize::try_from(zero_padding).unwrap_or(usize::MAX),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the settings (a spec may also be built by hand), naming the offending property.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let invalid =
            |name, value: &dyn ToString, reason| WorkloadError::InvalidValue { name, value: value.to_string(), reason };
        if self.record_count == 0 {
            return Err(invalid("recordcount", &0, "must be at least 1"));
        }
        if self.insert_start.checked_add(self.insert_count).is_none_or(|end| end > self.record_count) {
            return Err(WorkloadError::InsertRangeExceedsRecordCount {
                insert_start: self.insert_start,
                insert_count: self.insert_count,
                record_count: self.record_count,
            });
        }
        if self.insert_count == 0 {
            return Err(invalid("insertcount", &0, "there must be at least one key to request"));
        }
        let mut proportions = vec![
            ("readproportion", self.read_proportion),
            ("updateproportion", self.update_proportion),
            ("insertproportion", self.insert_proportion),
            ("readmodifywriteproportion", self.read_modify_write_proportion),
        ];
        if let RequestDistribution::Hotspot { data_fraction, opn_fraction } = self.request_distribution {
            proportions.extend([("hotspotdatafraction", data_fraction), ("hotspotopnfraction", opn_fraction)]);
        }
        for (name, value) in proportions {
            if !(0.0..=1.0).contains(&value) {
                return Err(WorkloadError::ProportionOutOfRange { name, value });
            }
        }
        if self.read_proportion + self.update_proportion + self.insert_proportion + self.read_modify_write_proportion
            == 0.0
        {
            return Err(WorkloadError::NoOperations);
        }
        let theta = self.zipfian_constant;
        if !(theta.is_finite() && theta >= 0.0 && theta != 1.0) {
            return Err(invalid("zipfianconstant", &theta, "must be finite, at least 0, and not 1"));
        }
        for (name, value) in [("fieldcount", self.field_count), ("fieldlength", self.field_length)] {
            if value == 0 {
                return Err(invalid(name, &0, "must be at least 1"));
            }
        }
        if self.field_count.checked_mul(self.field_length).is_none_or(|len| len > MAX_VALUE_LEN) {
            return Err(invalid(
                "fieldlength",
                &self.field_length,
                "fieldcount × fieldlength is over the 16 MiB record limit",
            ));
        }
        if self.zero_padding > MAX_ZERO_PADDING {
            return Err(invalid("zeropadding", &self.zero_padding, "at most 64 digits of padding are supported"));
        }
        Ok(())
    }

    /// Bytes of a record's value: `fieldcount × fieldlength` (at most [`MAX_VALUE_LEN`] in a
    /// [validated](Self::validate) spec).
    pub fn value_len(&self) -> usize {
        self.field_count.saturating_mul(self.field_length).min(MAX_VALUE_LEN) as usize
    }
}

/// A property's value with surrounding whitespace removed, if present.
fn get_str<'a>(p: &'a Properties, name: &str) -> Option<&'a str> {
    p.get(name).map(str::trim)
}

fn get_u64(p: &Properties, name: &'static str, default: u64) -> Result<u64, WorkloadError> {
    match get_str(p, name) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| WorkloadError::InvalidNumber {
            name,
            value: text.to_owned(),
            expected: "non-negative integer",
        }),
    }
}

fn get_f64(p: &Properties, name: &'static str, default: f64) -> Result<f64, WorkloadError> {
    let Some(text) = get_str(p, name) else { return Ok(default) };
    // Java's Double.parseDouble also takes a type suffix ("0.5d", "1f").
    let digits = text.strip_suffix(['d', 'D', 'f', 'F']).unwrap_or(text);
    let invalid = || WorkloadError::InvalidNumber { name, value: text.to_owned(), expected: "number" };
    // Rust also reads "inf" and "nan", which Java spells differently; neither is a usable setting.
    match digits.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(invalid()),
    }
}

fn get_proportion(p: &Properties, name: &'static str, default: f64) -> Result<f64, WorkloadError> {
    let value = get_f64(p, name, default)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(WorkloadError::ProportionOutOfRange { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<WorkloadSpec, WorkloadError> {
        WorkloadSpec::from_properties(&Properties::parse(text).unwrap())
    }

    #[test]
    fn defaults_are_ycsbs() {
        let s = spec("").unwrap();
        assert_eq!(s.record_count, RECORD_COUNT_WHEN_ZERO);
        assert_eq!(s.operation_count, 0);
        assert_eq!((s.insert_start, s.insert_count), (0, RECORD_COUNT_WHEN_ZERO));
        assert_eq!((s.read_proportion, s.update_proportion), (0.95, 0.05));
        assert_eq!((s.insert_proportion, s.read_modify_write_proportion), (0.0, 0.0));
        assert_eq!(s.request_distribution, RequestDistribution::Uniform);
        assert_eq!(s.zipfian_constant, 0.99);
        assert_eq!((s.field_count, s.field_length, s.value_len()), (10, 100, 1000));
        assert_eq!(s.insert_order, InsertOrder::Hashed);
        assert_eq!(s.zero_padding, 1);
    }

    #[test]
    fn hotspot_fractions() {
        let s = spec("requestdistribution=hotspot\nhotspotopnfraction=0.9\n").unwrap();
        assert_eq!(s.request_distribution, RequestDistribution::Hotspot { data_fraction: 0.2, opn_fraction: 0.9 });
        assert_eq!(
            spec("requestdistribution=hotspot\nhotspotdatafraction=2\n").unwrap_err(),
            WorkloadError::ProportionOutOfRange { name: "hotspotdatafraction", value: 2.0 }
        );
    }

    #[test]
    fn numbers_are_read_like_java_and_trimmed() {
        let s = spec("recordcount = 500 \nreadproportion=0.5d\nupdateproportion=+0.5\n").unwrap();
        assert_eq!(s.record_count, 500);
        assert_eq!((s.read_proportion, s.update_proportion), (0.5, 0.5));
    }

    #[test]
    fn insert_range_is_checked() {
        let s = spec("recordcount=100\ninsertstart=40\n").unwrap();
        assert_eq!((s.insert_start, s.insert_count), (40, 60));
        assert_eq!(
            spec("recordcount=100\ninsertstart=40\ninsertcount=61\n").unwrap_err(),
            WorkloadError::InsertRangeExceedsRecordCount { insert_start: 40, insert_count: 61, record_count: 100 }
        );
        assert!(matches!(
            spec("recordcount=100\ninsertstart=100\n").unwrap_err(),
            WorkloadError::InvalidValue { name: "insertcount", .. }
        ));
        assert!(matches!(
            spec(&format!("insertstart=1\ninsertcount={}\n", u64::MAX)).unwrap_err(),
            WorkloadError::InsertRangeExceedsRecordCount { .. }
        ));
    }

    #[test]
    fn bad_values_name_their_property() {
        let cases = [
            ("recordcount=lots", "recordcount"),
            ("recordcount=-5", "recordcount"),
            ("recordcount=1e6", "recordcount"),
            ("readproportion=half", "readproportion"),
            ("readproportion=nan", "readproportion"),
            ("readproportion=1.5", "readproportion"),
            ("updateproportion=-0.1", "updateproportion"),
            ("zipfianconstant=1", "zipfianconstant"),
            ("zipfianconstant=-1", "zipfianconstant"),
            ("fieldcount=0", "fieldcount"),
            ("fieldlength=x", "fieldlength"),
            ("fieldlength=99999999999", "fieldlength"),
            ("fieldlengthdistribution=zipfian", "fieldlengthdistribution"),
            ("zeropadding=65", "zeropadding"),
            ("requestdistribution=exponential", "requestdistribution"),
            ("insertorder=random", "insertorder"),
        ];
        for (text, name) in cases {
            let err = spec(text).unwrap_err();
            assert!(err.to_string().contains(name), "{text}: {err}");
        }
    }

    #[test]
    fn hand_built_specs_are_checked_too() {
        let good = spec("recordcount=10\n").unwrap();
        assert_eq!(good.validate(), Ok(()));
        let broken = [
            WorkloadSpec { insert_count: 0, ..good.clone() },
            WorkloadSpec { record_count: 0, ..good.clone() },
            WorkloadSpec { insert_start: 5, ..good.clone() },
            WorkloadSpec { read_proportion: 2.0, ..good.clone() },
            WorkloadSpec { read_proportion: 0.0, update_proportion: 0.0, ..good.clone() },
            WorkloadSpec { zipfian_constant: f64::NAN, ..good.clone() },
            WorkloadSpec { field_length: u64::MAX, ..good.clone() },
            WorkloadSpec { zero_padding: 100, ..good.clone() },
            WorkloadSpec {
                request_distribution: RequestDistribution::Hotspot { data_fraction: -1.0, opn_fraction: 0.5 },
                ..good.clone()
            },
        ];
        for spec in broken {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
    }

    #[test]
    fn scans_and_empty_mixes_are_refused() {
        let err =
            spec("scanproportion=0.95\ninsertproportion=0.05\nreadproportion=0\nupdateproportion=0\n").unwrap_err();
        assert_eq!(err, WorkloadError::ScanUnsupported(0.95));
        assert!(err.to_string().contains("scans (YCSB workload E) are not supported"), "{err}");
        assert_eq!(spec("readproportion=0\nupdateproportion=0\n").unwrap_err(), WorkloadError::NoOperations);
    }
}
