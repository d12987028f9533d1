// neon_gemm_f32_8x12 with A packed per row tile as [k][8] (two q loads per k), B packed
// [k][12]. A sketch of the k loop for llvm-mca, not vitc output: v0-v1 the 8 A values of
// one k, v2-v4 one k-row of B, v8-v31 the 24 accumulators, FMLA by element.
	ldp	q0, q1, [x1], #32
	ldp	q2, q3, [x2], #32
	ldr	q4, [x2], #16
	fmla	v8.4s, v2.4s, v0.s[0]
	fmla	v9.4s, v3.4s, v0.s[0]
	fmla	v10.4s, v4.4s, v0.s[0]
	fmla	v11.4s, v2.4s, v0.s[1]
	fmla	v12.4s, v3.4s, v0.s[1]
	fmla	v13.4s, v4.4s, v0.s[1]
	fmla	v14.4s, v2.4s, v0.s[2]
	fmla	v15.4s, v3.4s, v0.s[2]
	fmla	v16.4s, v4.4s, v0.s[2]
	fmla	v17.4s, v2.4s, v0.s[3]
	fmla	v18.4s, v3.4s, v0.s[3]
	fmla	v19.4s, v4.4s, v0.s[3]
	fmla	v20.4s, v2.4s, v1.s[0]
	fmla	v21.4s, v3.4s, v1.s[0]
	fmla	v22.4s, v4.4s, v1.s[0]
	fmla	v23.4s, v2.4s, v1.s[1]
	fmla	v24.4s, v3.4s, v1.s[1]
	fmla	v25.4s, v4.4s, v1.s[1]
	fmla	v26.4s, v2.4s, v1.s[2]
	fmla	v27.4s, v3.4s, v1.s[2]
	fmla	v28.4s, v4.4s, v1.s[2]
	fmla	v29.4s, v2.4s, v1.s[3]
	fmla	v30.4s, v3.4s, v1.s[3]
	fmla	v31.4s, v4.4s, v1.s[3]
	subs	x3, x3, #1
	b.ne	.Lloop
