-- OOD exact match per attribute, mean over seeds
PIVOT (SELECT model, strategy, attribute, round(accuracy, 3) AS accuracy
       FROM accuracy_summary WHERE split = 'ood' AND attribute <> 'all')
ON attribute IN ('birth_date', 'birth_city', 'university', 'major', 'employer', 'employer_city')
USING any_value(accuracy)
ORDER BY model, strategy;
