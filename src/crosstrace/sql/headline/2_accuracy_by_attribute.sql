-- OOD exact match per attribute: mean over seeds [95 % interval]
SELECT model, strategy, any_value(n_seeds) AS seeds,
       interval_text(max(accuracy) FILTER (WHERE attribute = 'birth_date'),
                     max(ci_low) FILTER (WHERE attribute = 'birth_date'),
                     max(ci_high) FILTER (WHERE attribute = 'birth_date'), 2) AS birth_date,
       interval_text(max(accuracy) FILTER (WHERE attribute = 'birth_city'),
                     max(ci_low) FILTER (WHERE attribute = 'birth_city'),
                     max(ci_high) FILTER (WHERE attribute = 'birth_city'), 2) AS birth_city,
       interval_text(max(accuracy) FILTER (WHERE attribute = 'university'),
                     max(ci_low) FILTER (WHERE attribute = 'university'),
                     max(ci_high) FILTER (WHERE attribute = 'university'), 2) AS university,
       interval_text(max(accuracy) FILTER (WHERE attribute = 'major'),
                     max(ci_low) FILTER (WHERE attribute = 'major'),
                     max(ci_high) FILTER (WHERE attribute = 'major'), 2) AS major,
       interval_text(max(accuracy) FILTER (WHERE attribute = 'employer'),
                     max(ci_low) FILTER (WHERE attribute = 'employer'),
                     max(ci_high) FILTER (WHERE attribute = 'employer'), 2) AS employer,
       interval_text(max(accuracy) FILTER (WHERE attribute = 'employer_city'),
                     max(ci_low) FILTER (WHERE attribute = 'employer_city'),
                     max(ci_high) FILTER (WHERE attribute = 'employer_city'), 2) AS employer_city
FROM accuracy_summary
WHERE split = 'ood' AND attribute <> 'all'
GROUP BY model, strategy
ORDER BY model, strategy;
