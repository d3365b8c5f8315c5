//! Money as integer micro-units (1 unit = 1,000,000 micro-units) with an ISO 4217 currency.
//! Never floats: sums of many small prorated amounts must add up exactly.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

/// An amount in millionths of a currency unit. Signed so that corrections can be expressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MicroUnits(i64);

pub const MICRO_UNITS_PER_UNIT: i64 = 1_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("amount must not be negative")]
    Negative,
    #[error("amount is not a decimal number with at most 6 fractional digits")]
    Malformed,
    #[error("amount is too large")]
    Overflow,
    #[error("a currency is three uppercase letters (ISO 4217), e.g. EUR")]
    InvalidCurrency,
}

impl MicroUnits {
    pub const ZERO: MicroUnits = MicroUnits(0);

    pub const fn new(micro_units: i64) -> Self {
        Self(micro_units)
    }

    pub const fn get(&self) -> i64 {
        self.0
    }

    /// A price that cannot be negative, e.g. an hourly list price.
    ///
    /// # Errors
    /// [`MoneyError::Negative`] for amounts below zero.
    pub fn non_negative(micro_units: i64) -> Result<Self, MoneyError> {
        if micro_units < 0 { Err(MoneyError::Negative) } else { Ok(Self(micro_units)) }
    }

    /// Parses a decimal such as `"0.75"` or `"25.3341"` exactly, without going through floats.
    ///
    /// # Errors
    /// [`MoneyError::Malformed`] for anything but digits with an optional point and up to six
    /// fractional digits; [`MoneyError::Negative`] for a leading minus; [`MoneyError::Overflow`].
    pub fn parse_decimal(text: &str) -> Result<Self, MoneyError> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(MoneyError::Negative);
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let all_digits = |part: &str| part.chars().all(|character| character.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 6 {
            return Err(MoneyError::Malformed);
        }
        let whole: i64 = whole.parse().map_err(|_| MoneyError::Overflow)?;
        let fraction_value: i64 = format!("{fraction:0<6}").parse().map_err(|_| MoneyError::Malformed)?;
        whole
            .checked_mul(MICRO_UNITS_PER_UNIT)
            .and_then(|micro| micro.checked_add(fraction_value))
            .map(Self)
            .ok_or(MoneyError::Overflow)
    }
}

impl Add for MicroUnits {
    type Output = MicroUnits;

    fn add(self, other: MicroUnits) -> MicroUnits {
        MicroUnits(self.0.saturating_add(other.0))
    }
}

impl AddAssign for MicroUnits {
    fn add_assign(&mut self, other: MicroUnits) {
        self.0 = self.0.saturating_add(other.0);
    }
}

impl Sub for MicroUnits {
    type Output = MicroUnits;

    fn sub(self, other: MicroUnits) -> MicroUnits {
        MicroUnits(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for MicroUnits {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let unit = MICRO_UNITS_PER_UNIT.unsigned_abs();
        write!(formatter, "{sign}{}.{:06}", magnitude / unit, magnitude % unit)
    }
}

/// An ISO 4217 currency code such as `EUR` or `USD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");
    pub const USD: Currency = Currency(*b"USD");

    /// # Errors
    /// [`MoneyError::InvalidCurrency`] unless the text is exactly three ASCII uppercase letters.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let bytes: [u8; 3] = text.as_bytes().try_into().map_err(|_| MoneyError::InvalidCurrency)?;
        if bytes.iter().all(u8::is_ascii_uppercase) { Ok(Self(bytes)) } else { Err(MoneyError::InvalidCurrency) }
    }

    pub fn as_str(&self) -> &str {
        // The constructor admits only ASCII uppercase letters, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Currency::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Rates that turn amounts in other currencies into the reporting currency, for ranking offers
/// priced in different currencies and for reporting. A rate is "one unit of `from` is worth
/// `rate` units of the reporting currency", held in micro-units so that conversion stays integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRates {
    reporting: Currency,
    rates: Vec<(Currency, MicroUnits)>,
}

impl ExchangeRates {
    /// Nominal rates used when none are configured: they keep ranking sensible in development;
    /// production sets `QM_FX_RATES`.
    pub const DEFAULT: &'static str = "USD=0.92,EUR=1,GBP=1.17";

    /// Parses `CUR=rate,CUR=rate` (rates are decimals, relative to `reporting`).
    ///
    /// # Errors
    /// [`MoneyError`] for a malformed currency or rate.
    pub fn parse(reporting: Currency, text: &str) -> Result<Self, MoneyError> {
        let mut rates = vec![(reporting, MicroUnits(MICRO_UNITS_PER_UNIT))];
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (currency, rate) = pair.split_once('=').ok_or(MoneyError::Malformed)?;
            let currency = Currency::parse(currency.trim())?;
            let rate = MicroUnits::parse_decimal(rate)?;
            if currency != reporting {
                rates.push((currency, rate));
            }
        }
        Ok(Self { reporting, rates })
    }

    pub fn reporting(&self) -> Currency {
        self.reporting
    }

    /// These rates with `currency`'s replaced (or added); the reporting currency stays at 1.
    pub fn with_rate(mut self, currency: Currency, rate: MicroUnits) -> Self {
        if currency != self.reporting {
            self.rates.retain(|(known, _)| *known != currency);
            self.rates.push((currency, rate));
        }
        self
    }

    /// Every currency with its rate, the reporting currency first.
    pub fn rates(&self) -> &[(Currency, MicroUnits)] {
        &self.rates
    }

    /// `amount` of `from` in the reporting currency, or `None` when no rate is known.
    pub fn convert(&self, amount: MicroUnits, from: Currency) -> Option<MicroUnits> {
        let (_, rate) = self.rates.iter().find(|(currency, _)| *currency == from)?;
        let converted = i128::from(amount.0) * i128::from(rate.0) / i128::from(MICRO_UNITS_PER_UNIT);
        i64::try_from(converted).ok().map(MicroUnits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_rates_convert_exactly_and_know_what_they_do_not_know() {
        let rates = ExchangeRates::parse(Currency::EUR, "USD=0.92").expect("rates");
        assert_eq!(rates.convert(MicroUnits::new(1_006_000), Currency::USD), Some(MicroUnits::new(925_520)));
        assert_eq!(rates.convert(MicroUnits::new(5), Currency::EUR), Some(MicroUnits::new(5)));
        assert_eq!(rates.convert(MicroUnits::new(5), Currency::parse("JPY").expect("code")), None);
        assert!(ExchangeRates::parse(Currency::EUR, "USD").is_err());
        assert!(ExchangeRates::parse(Currency::EUR, "usd=1").is_err());
    }

    #[test]
    fn a_decimal_price_is_parsed_exactly() {
        assert_eq!(MicroUnits::parse_decimal("0.75"), Ok(MicroUnits::new(750_000)));
        assert_eq!(MicroUnits::parse_decimal("25.334133"), Ok(MicroUnits::new(25_334_133)));
        assert_eq!(MicroUnits::parse_decimal("3"), Ok(MicroUnits::new(3_000_000)));
    }

    #[test]
    fn a_negative_price_is_rejected() {
        assert_eq!(MicroUnits::parse_decimal("-1.0"), Err(MoneyError::Negative));
        assert_eq!(MicroUnits::non_negative(-1), Err(MoneyError::Negative));
    }

    #[test]
    fn more_than_six_fractional_digits_is_malformed() {
        assert_eq!(MicroUnits::parse_decimal("0.1234567"), Err(MoneyError::Malformed));
        assert_eq!(MicroUnits::parse_decimal("1e3"), Err(MoneyError::Malformed));
        assert_eq!(MicroUnits::parse_decimal(""), Err(MoneyError::Malformed));
    }

    #[test]
    fn amounts_print_with_six_decimals() {
        assert_eq!(MicroUnits::new(750_000).to_string(), "0.750000");
        assert_eq!(MicroUnits::new(-1_500_000).to_string(), "-1.500000");
    }

    #[test]
    fn a_currency_is_three_uppercase_letters() {
        assert_eq!(Currency::parse("EUR"), Ok(Currency::EUR));
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }
}
