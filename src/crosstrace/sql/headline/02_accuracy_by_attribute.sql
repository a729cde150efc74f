-- OOD exact match per attribute: mean over seeds [95 % interval]
WITH cell AS (
    SELECT model, strategy, n_seeds AS seeds, attribute,
           interval_text(accuracy, ci_low, ci_high, 2) AS text
    FROM accuracy_summary
    WHERE split = 'ood' AND attribute <> 'all' AND checkpoint = 'final'
)
PIVOT cell
ON attribute IN ('birth_date', 'birth_city', 'university', 'major', 'employer', 'employer_city')
USING any_value(text)
GROUP BY model, strategy, seeds
ORDER BY model, strategy;
