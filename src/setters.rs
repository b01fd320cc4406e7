//! `with_*` setters for option structs, written once: each takes the options by value and
//! returns them, so options read as one chained expression (`BuildOptions::new(dir)
//! .with_target("app")`), and a field added later is one more line, not a breaking change.

/// Defines `pub fn NAME(self, value: impl Into<TYPE>) -> Self` setting `FIELD`, for each
/// `NAME => FIELD: TYPE` given. An `Option<T>` field takes a plain `T` too.
macro_rules! with_setters {
    ($ty:ident { $($name:ident => $field:ident : $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](", stringify!($ty), "::", stringify!($field), ").")]
                #[must_use]
                pub fn $name(mut self, value: impl Into<$t>) -> Self {
                    self.$field = value.into();
                    self
                }
            )*
        }
    };
}

pub(crate) use with_setters;
