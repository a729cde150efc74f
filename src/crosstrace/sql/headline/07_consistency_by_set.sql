-- Cosine of the BIO and QA gradients restricted to a parameter set (global top-1 %, primary definition): every ranked parameter first, then the shared set and a random set matched to it stratum by stratum; the shared set is chosen by the size of both gradients, which pushes its cosine towards ±1 with the sign of the all-parameter correlation (a selection effect), so read it beside "all"; sign agreement: share of elements whose two gradients agree in sign; ‖g‖: each gradient's L2 norm over all ranked parameters; mean over seeds [95 % interval]
SELECT model, strategy, source, any_value(n_seeds) AS seeds,
       interval_text(max(cosine) FILTER (WHERE "set" = 'all'),
                     max(ci_low) FILTER (WHERE "set" = 'all'),
                     max(ci_high) FILTER (WHERE "set" = 'all'), 3) AS "all",
       round(max(sign_agreement) FILTER (WHERE "set" = 'all'), 3) AS "all: sign agreement",
       round(max(grad_norm_bio) FILTER (WHERE "set" = 'all'), 4) AS "all: ‖g_bio‖",
       round(max(grad_norm_qa) FILTER (WHERE "set" = 'all'), 4) AS "all: ‖g_qa‖",
       interval_text(max(cosine) FILTER (WHERE "set" = 'shared'),
                     max(ci_low) FILTER (WHERE "set" = 'shared'),
                     max(ci_high) FILTER (WHERE "set" = 'shared'), 3) AS shared,
       round(max(sign_agreement) FILTER (WHERE "set" = 'shared'), 3)
           AS "shared: sign agreement",
       interval_text(max(cosine) FILTER (WHERE "set" = 'random'),
                     max(ci_low) FILTER (WHERE "set" = 'random'),
                     max(ci_high) FILTER (WHERE "set" = 'random'), 3) AS random
FROM consistency_by_set_summary
WHERE definition = (SELECT primary_definition FROM analysis_settings) AND scope = 'global'
  AND k_percent = 1
GROUP BY model, strategy, source
ORDER BY model, source, strategy;
