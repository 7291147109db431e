use crate::{Array, ArrayError, Same};

/// One argument position: an [`Array`] (split) or a [`Same`] (whole to every call).
pub trait Split {
    /// What one call receives.
    type Item;

    /// `Some(len)` for an array, `None` for an argument every call shares.
    fn array_len(&self) -> Option<usize>;

    /// The value call `call` receives. Only called after a successful
    /// [`SplitArgs::plan`], so arrays are non-empty.
    ///
    /// # Panics
    /// For an empty [`Array`] (which [`SplitArgs::plan`] refuses first).
    fn item(&self, call: usize) -> Self::Item;
}

impl<T: Clone> Split for Array<T> {
    type Item = T;

    fn array_len(&self) -> Option<usize> {
        Some(self.len())
    }

    fn item(&self, call: usize) -> T {
        self.padded(call)
            .expect("plan() refuses empty arrays before any call is made")
            .clone()
    }
}

impl<T: Clone> Split for Same<T> {
    type Item = T;

    fn array_len(&self) -> Option<usize> {
        None
    }

    fn item(&self, _call: usize) -> T {
        self.0.clone()
    }
}

/// How many calls a set of arguments makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPlan {
    calnum: usize,
}

impl SplitPlan {
    /// The plan for argument positions of these array lengths (`None`: not an array).
    pub fn from_lengths(
        lengths: impl IntoIterator<Item = Option<usize>>,
    ) -> Result<SplitPlan, ArrayError> {
        let mut calnum = 1;
        for (position, len) in lengths.into_iter().enumerate() {
            match len {
                Some(0) => return Err(ArrayError::EmptyArray { position }),
                Some(n) => calnum = calnum.max(n),
                None => {}
            }
        }
        Ok(SplitPlan { calnum })
    }

    /// Number of calls: the longest array's length, at least 1.
    pub fn calnum(&self) -> usize {
        self.calnum
    }
}

/// A whole argument list: one [`Split`] or a tuple of them (up to 8), or `()`.
///
/// `call(i)` gives call `i` its arguments: a single value for a single
/// argument, a tuple for a tuple.
pub trait SplitArgs {
    /// What one call receives.
    type Call;

    /// Array lengths of the argument positions, in order (`None`: not an array).
    fn lengths(&self) -> Vec<Option<usize>>;

    /// Call `i`'s arguments (an `i` past the plan's `calnum` gets each
    /// array's last element, as padding does).
    ///
    /// # Panics
    /// If an argument is an empty [`Array`]: check [`plan`](Self::plan) first.
    fn call(&self, call: usize) -> Self::Call;

    /// The split plan, or why there is none.
    fn plan(&self) -> Result<SplitPlan, ArrayError> {
        SplitPlan::from_lengths(self.lengths())
    }
}

impl SplitArgs for () {
    type Call = ();

    fn lengths(&self) -> Vec<Option<usize>> {
        Vec::new()
    }

    fn call(&self, _call: usize) {}
}

impl<T: Clone> SplitArgs for Array<T> {
    type Call = T;

    fn lengths(&self) -> Vec<Option<usize>> {
        vec![self.array_len()]
    }

    fn call(&self, call: usize) -> T {
        self.item(call)
    }
}

impl<T: Clone> SplitArgs for Same<T> {
    type Call = T;

    fn lengths(&self) -> Vec<Option<usize>> {
        vec![None]
    }

    fn call(&self, _call: usize) -> T {
        self.0.clone()
    }
}

macro_rules! tuple_split_args {
    ($($name:ident . $idx:tt),+) => {
        impl<$($name: Split),+> SplitArgs for ($($name,)+) {
            type Call = ($($name::Item,)+);

            fn lengths(&self) -> Vec<Option<usize>> {
                vec![$(self.$idx.array_len()),+]
            }

            fn call(&self, call: usize) -> Self::Call {
                ($(self.$idx.item(call),)+)
            }
        }
    };
}

tuple_split_args!(A.0);
tuple_split_args!(A.0, B.1);
tuple_split_args!(A.0, B.1, C.2);
tuple_split_args!(A.0, B.1, C.2, D.3);
tuple_split_args!(A.0, B.1, C.2, D.3, E.4);
tuple_split_args!(A.0, B.1, C.2, D.3, E.4, F.5);
tuple_split_args!(A.0, B.1, C.2, D.3, E.4, F.5, G.6);
tuple_split_args!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_array_means_one_call() {
        assert_eq!(().plan().unwrap().calnum(), 1);
        assert_eq!((Same(3), Same("x")).plan().unwrap().calnum(), 1);
        assert_eq!(Same(5).call(0), 5);
    }

    #[test]
    fn empty_array_names_its_position() {
        let err = (Same(1), Array::<u8>::new([])).plan().unwrap_err();
        assert_eq!(err, ArrayError::EmptyArray { position: 1 });
        assert!(err.to_string().contains("position 1"));
    }

    #[test]
    fn seed_special_case_1() {
        // funa(a=Array(range(10)), b=Array(("b1","b2","b3"))): 10 calls, b3 from the 3rd on.
        let args = (Array::new(0..10), Array::from(["b1", "b2", "b3"]));
        assert_eq!(args.plan().unwrap().calnum(), 10);
        let bs: Vec<_> = (0..10).map(|i| args.call(i).1).collect();
        assert_eq!(
            bs,
            ["b1", "b2", "b3", "b3", "b3", "b3", "b3", "b3", "b3", "b3"]
        );
    }

    proptest! {
        #[test]
        fn calnum_is_the_longest_array_and_padding_repeats_the_last(
            a in prop::collection::vec(any::<u16>(), 1..40),
            b in prop::collection::vec(any::<i8>(), 1..40),
            s in any::<u32>(),
        ) {
            let args = (Array::from(a.clone()), Same(s), Array::from(b.clone()));
            let plan = args.plan().unwrap();
            prop_assert_eq!(plan.calnum(), a.len().max(b.len()));
            for i in 0..plan.calnum() {
                let (x, y, z) = args.call(i);
                prop_assert_eq!(x, a[i.min(a.len() - 1)]);
                prop_assert_eq!(y, s);
                prop_assert_eq!(z, b[i.min(b.len() - 1)]);
            }
        }

        #[test]
        fn any_empty_array_is_refused(
            lens in prop::collection::vec(prop::option::of(0usize..5), 0..8),
        ) {
            let result = SplitPlan::from_lengths(lens.clone());
            match lens.iter().position(|l| *l == Some(0)) {
                Some(position) => prop_assert_eq!(result, Err(ArrayError::EmptyArray { position })),
                None => prop_assert_eq!(
                    result.unwrap().calnum(),
                    lens.iter().flatten().copied().max().unwrap_or(1)
                ),
            }
        }
    }
}
