//! The C header (`model.h`) that goes beside every compiled library: the ABI v1 types and
//! prototypes for the library's prefix, and the model's fixed facts (input/output counts, ranks,
//! shapes, workspace size, `P_run`'s error codes) as macros, so C code can size its buffers at
//! compile time. It only formats text; the numbers come from the compiled model.

use crate::abi;
use std::fmt::Write;

/// What the header states about one compiled model.
#[derive(Clone, Debug)]
pub struct HeaderInfo {
    /// The model's name (for the comment at the top).
    pub model: String,
    /// The symbol prefix `P` (a C identifier).
    pub prefix: String,
    /// The target the code was generated for.
    pub target: String,
    /// Graph inputs and outputs: ONNX name and shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<(String, Vec<usize>)>,
    pub workspace_bytes: usize,
    pub weights_bytes: usize,
}

/// Render the header.
pub fn render(h: &HeaderInfo) -> String {
    let p = &h.prefix;
    let up = p.to_ascii_uppercase();
    let mut s = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        s,
        "/* {p}: model `{}` compiled by vitc for target {}. Generated; do not edit.\n *\n \
         * Inputs and outputs are dense float32 tensors in the ONNX layout (row-major, the shapes\n \
         * below), whatever precision the model runs in inside. Output buffers must not overlap\n \
         * each other or the inputs. */",
        sanitize_comment(&h.model),
        h.target
    );
    let _ = writeln!(s, "#ifndef VITC_MODEL_{up}_H\n#define VITC_MODEL_{up}_H\n");
    s.push_str("#include <stddef.h>\n#include <stdint.h>\n\n");
    s.push_str("#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    // Shared by every model header and the runtime's vitc.h, so any of them can be included
    // together.
    s.push_str(
        "#ifndef VITC_EXEC_DEFINED\n#define VITC_EXEC_DEFINED\n\
         /* Runs task(task_ctx, i) once for every i < count, possibly concurrently, and returns\n \
         * when all have finished. */\n\
         typedef void (*vitc_task_fn)(void *task_ctx, uint32_t index);\n\
         typedef struct vitc_exec {\n  \
         void (*parallel_for)(void *pool, uint32_t count, vitc_task_fn task, void *task_ctx);\n  \
         void *pool;\n\
         } vitc_exec;\n\
         #endif /* VITC_EXEC_DEFINED */\n\n",
    );

    let _ = writeln!(s, "#define {up}_ABI_VERSION {}", abi::ABI_VERSION);
    let _ = writeln!(s, "#define {up}_NUM_INPUTS {}", h.inputs.len());
    let _ = writeln!(s, "#define {up}_NUM_OUTPUTS {}", h.outputs.len());
    for (kind, list) in [("INPUT", &h.inputs), ("OUTPUT", &h.outputs)] {
        for (i, (name, shape)) in list.iter().enumerate() {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let numel: usize = shape.iter().product();
            let _ = writeln!(s, "/* {kind} {i}: \"{}\" */", sanitize_comment(name));
            let _ = writeln!(s, "#define {up}_{kind}{i}_RANK {}", shape.len());
            let _ = writeln!(s, "#define {up}_{kind}{i}_SHAPE {{{}}}", dims.join(", "));
            let _ = writeln!(s, "#define {up}_{kind}{i}_NUMEL {numel}");
        }
    }
    let _ = writeln!(
        s,
        "/* Bytes of scratch memory P_run needs, 64-byte aligned (0: pass NULL). */\n\
         #define {up}_WORKSPACE_SIZE {}\n\
         #define {up}_WORKSPACE_ALIGN {}\n\
         /* Bytes of weights inside the library. */\n\
         #define {up}_WEIGHTS_SIZE {}\n",
        h.workspace_bytes,
        abi::WORKSPACE_ALIGN,
        h.weights_bytes
    );
    let _ = writeln!(
        s,
        "/* {p}_run return codes. Nothing is written when the arguments are rejected. */"
    );
    let _ = writeln!(s, "#define {up}_OK {}", abi::OK);
    for (code, name, what) in abi::ERRORS {
        let _ = writeln!(s, "#define {up}_{name} {code} /* {what} */");
    }
    s.push('\n');

    let _ = writeln!(
        s,
        "/* ABI version; {abv} for this header. */\n\
         uint32_t {p}_abi_version(void);\n\
         uint32_t {p}_num_inputs(void);\n\
         uint32_t {p}_num_outputs(void);\n\
         /* Rank and shape of input/output i; 0 and NULL when i is out of range. */\n\
         uint32_t {p}_input_rank(uint32_t i);\n\
         const int64_t *{p}_input_shape(uint32_t i);\n\
         uint32_t {p}_output_rank(uint32_t i);\n\
         const int64_t *{p}_output_shape(uint32_t i);\n\
         /* Bytes of workspace {p}_run needs; the caller passes 64-byte aligned memory. */\n\
         size_t {p}_workspace_size(void);\n\
         /* Run the model: inputs[i] and outputs[i] point to dense float32 buffers of the shapes\n \
         * above. exec may be NULL (or its parallel_for NULL): the model then runs on the calling\n \
         * thread. Returns {up}_OK, or an error code above without writing anything. Never\n \
         * allocates; safe to call from several threads at once with separate workspaces. */\n\
         int32_t {p}_run(const float *const *inputs, float *const *outputs, void *workspace,\n\
         {pad}const vitc_exec *exec);\n",
        abv = abi::ABI_VERSION,
        pad = " ".repeat(p.len() + 12),
    );
    s.push_str("#ifdef __cplusplus\n}\n#endif\n\n");
    let _ = writeln!(s, "#endif /* VITC_MODEL_{up}_H */");
    s
}

/// Keep user-controlled names (ONNX names) from closing the comment they are printed in.
fn sanitize_comment(s: &str) -> String {
    s.replace("*/", "* /").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_states_the_model() {
        let h = render(&HeaderInfo {
            model: "tiny */ evil".into(),
            prefix: "tiny".into(),
            target: "x86_64-avx2".into(),
            inputs: vec![("pixel_values".into(), vec![1, 3, 224, 224])],
            outputs: vec![("logits".into(), vec![1, 10]), ("s".into(), vec![])],
            workspace_bytes: 128,
            weights_bytes: 40,
        });
        for want in [
            "#define TINY_INPUT0_SHAPE {1, 3, 224, 224}",
            "#define TINY_OUTPUT1_SHAPE {}",
            "#define TINY_OUTPUT1_RANK 0",
            "#define TINY_WORKSPACE_SIZE 128",
            "#define TINY_ERR_MISALIGNED_WORKSPACE 6",
            "int32_t tiny_run(const float *const *inputs",
            "#ifndef VITC_EXEC_DEFINED",
            "#ifndef VITC_MODEL_TINY_H",
        ] {
            assert!(h.contains(want), "missing {want:?} in\n{h}");
        }
        assert!(!h.contains("tiny */ evil"));
    }
}
