//! Flag groups: flags several commands share, declared once.
//!
//! argh has no way to embed one set of flags in several commands, so
//! [`flag_group!`] declares a group twice over from one list: a plain struct
//! holding the group's values (what validation takes), and a macro that
//! declares an argh command struct with the group's fields after its own and
//! a method returning the group. Groups chain:
//!
//! ```ignore
//! flag_group! { $ Transport, with_transport, transport {
//!     /// connect over AF_VSOCK to CID:PORT
//!     #[argh(option)]
//!     vsock: (Option<VsockPeer>),
//! } }
//!
//! with_transport! { [with_call_flags]
//!     #[derive(FromArgs, Debug)]
//!     #[argh(subcommand, name = "call")]
//!     /// Call one tool.
//!     pub struct CallArgs {
//!         #[argh(positional)]
//!         /// the tool's name
//!         pub tool: String,
//!     }
//! }
//! // CallArgs has `tool`, the transport flags, then the call flags;
//! // `a.transport()` is a `Transport`.
//! ```
//!
//! In a group, each field's doc comment comes before its `#[argh(...)]`
//! attribute (the group struct keeps the docs and drops the attribute), and
//! its type is in parentheses: the macro hands the type on as plain tokens,
//! since argh's derive reads types by their spelling (`Option<..>`,
//! `Vec<..>`, `bool`) and would not see through a captured `$ty:ty`. The
//! first token, `$`, lets the generated macro have repetitions of its own.

/// See the module documentation.
macro_rules! flag_group {
    (
        $d:tt
        $(#[doc = $gdoc:literal])*
        $group:ident, $with:ident, $get:ident {
            $(
                $(#[doc = $doc:literal])*
                #[argh($($argh:tt)*)]
                $field:ident : ($($ty:tt)*),
            )*
        }
    ) => {
        $(#[doc = $gdoc])*
        #[derive(Debug, Clone, Default)]
        pub struct $group {
            $( $(#[doc = $doc])* pub $field: $($ty)*, )*
        }

        macro_rules! $with {
            (
                [$d($d next:ident)*]
                $d(#[$d($d attr:tt)*])*
                pub struct $d name:ident { $d($d own:tt)* }
            ) => {
                impl $d name {
                    /// This command's flags of the group.
                    pub fn $get(&self) -> $group {
                        $group { $( $field: self.$field.clone(), )* }
                    }
                }
                flag_group!(@emit [$d($d next)*]
                    $d(#[$d($d attr)*])*
                    pub struct $d name {
                        $d($d own)*
                        $( $(#[doc = $doc])* #[argh($($argh)*)] pub $field: $($ty)*, )*
                    }
                );
            };
        }
    };
    // The last group of a command: the struct itself.
    (@emit [] $(#[$($attr:tt)*])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$($attr)*])*
        pub struct $name { $($body)* }
    };
    // More groups to add: the next group's macro takes the struct.
    (@emit [$next:ident $($rest:ident)*] $($item:tt)*) => {
        $next! { [$($rest)*] $($item)* }
    };
}
